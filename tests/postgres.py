"""A real PostgreSQL for the tests of the cluster mode: Debian's server binaries, a cluster made
by initdb in a temporary directory, owned by an unprivileged user (initdb refuses root), on a
free port of 127.0.0.1, with fsync and synchronous_commit on as in production."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import pytest

from tests.harness import free_port

CI_INSTALLS = ".ci/run installs it with apt-get (make test runs scripts/install-test-deps)"
# Debian's own server user: the package creates it, and it may run initdb when we are root.
SERVER_USER = "postgres"


def server_binaries() -> Path:
    """The directory of initdb and postgres; a missing server fails under CI, skips elsewhere."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    message = "PostgreSQL's initdb not found (Debian: apt-get install postgresql)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set and {CI_INSTALLS}, so it must be there")
    pytest.skip(f"{message}; set CI=1 to make this a failure")


class ServerUser(TypedDict, total=False):
    """The Popen arguments of `as_server_user`."""

    user: int
    group: int
    extra_groups: list[int]
    cwd: str


def as_server_user() -> ServerUser:
    """Popen arguments that run a server binary as Debian's server user when we are root (the
    process itself changes user, so signals reach the server, not a wrapper)."""
    if os.geteuid() != 0:
        return {}
    server = pwd.getpwnam(SERVER_USER)
    return {"user": server.pw_uid, "group": server.pw_gid, "extra_groups": [], "cwd": "/"}


@dataclass
class Postgres:
    """A running server: `url` reaches its `asyncjob` database as the `asyncjob` user."""

    bin: Path
    data: Path
    port: int
    password_file: Path
    proc: subprocess.Popen[bytes] | None = None
    # More server settings (`-c name=value`), e.g. shared_preload_libraries for pg_stat_statements.
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"postgresql://asyncjob@127.0.0.1:{self.port}/asyncjob"

    @property
    def dsn(self) -> str:
        return f"{self.url}?password={self.password_file.read_text().strip()}"

    def start(self) -> None:
        """Start (or start again after stop()) and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            [
                str(self.bin / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.data}",
                "-c",
                "fsync=on",
                "-c",
                "synchronous_commit=on",
                "-c",
                "max_connections=200",
                *(arg for name, value in self.settings.items() for arg in ("-c", f"{name}={value}")),
            ],
            **as_server_user(),
            stdout=subprocess.DEVNULL,
            stderr=open(self.data / "server.log", "ab"),  # noqa: SIM115 - the server's for its life
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"], check=False
            )
            if probe.returncode == 0:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited: {(self.data / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        raise RuntimeError("postgres did not accept connections within 30 s")

    def stop(self, immediate: bool = False) -> None:
        """A fast shutdown (SIGINT): connections are cut, committed data stays; `immediate`
        (SIGQUIT) skips the shutdown checkpoint, as a crash would, for a server thrown away."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def psql(self, sql: str, database: str = "asyncjob") -> str:
        """Run SQL as the superuser over the socket, in `database`; its output, unaligned."""
        out = subprocess.run(
            [
                str(self.bin / "psql"),
                "-h",
                str(self.data),
                "-p",
                str(self.port),
                "-d",
                database,
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
            **as_server_user(),
            check=True,
            capture_output=True,
            text=True,
        )
        return out.stdout.strip()


@contextmanager
def postgres(settings: dict[str, str] | None = None) -> Iterator[Postgres]:
    """A fresh server for the length of the block, removed after it; `settings` are given to it
    as `-c name=value`."""
    bin_dir = server_binaries()
    root = Path(tempfile.mkdtemp(prefix="asyncjob-pg-"))
    data = root / "data"
    data.mkdir()
    password_file = root / "password"
    password_file.write_text("not-a-secret-test-password\n")
    superuser_pw = root / "superuser-password"
    superuser_pw.write_text("not-a-secret-superuser\n")
    if os.geteuid() == 0:
        server = pwd.getpwnam(SERVER_USER)
        for path in (root, data, superuser_pw):
            os.chown(path, server.pw_uid, server.pw_gid)
    pg = Postgres(
        bin=bin_dir, data=data, port=free_port(), password_file=password_file, settings=dict(settings or {})
    )
    subprocess.run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "scram-sha-256",
            "--pwfile",
            str(superuser_pw),
            "--no-sync",
            "-E",
            "UTF8",
            "--locale",
            "C",
        ],
        **as_server_user(),
        check=True,
        capture_output=True,
    )
    # Local socket connections (our own psql as the superuser) need no password.
    hba = data / "pg_hba.conf"
    hba.write_text("local all postgres trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    pg.start()
    try:
        password = password_file.read_text().strip()
        subprocess.run(
            [
                str(bin_dir / "psql"),
                "-h",
                str(data),
                "-p",
                str(pg.port),
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-c",
                f"CREATE USER asyncjob PASSWORD '{password}'",
                "-c",
                "CREATE DATABASE asyncjob OWNER asyncjob",
            ],
            **as_server_user(),
            check=True,
            capture_output=True,
        )
        yield pg
    finally:
        pg.stop(immediate=True)
        shutil.rmtree(root, ignore_errors=True)


_databases = itertools.count()


def new_database(pg: Postgres) -> str:
    """A database of its own on `pg`, owned by the `asyncjob` user; its DSN. The tests of one
    module share a server and each gets a fresh database (created in a few milliseconds)."""
    name = f"test{next(_databases)}"
    pg.psql(f"CREATE DATABASE {name} OWNER asyncjob")
    return pg.dsn.replace("/asyncjob?", f"/{name}?")
