"""--web.config.file: real TLS handshakes (and mTLS) and bcrypt basic auth on /metrics and the API."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import bcrypt
import httpx
import pytest
import yaml

from tests.harness import Exporter, exporter
from tests.tools import openssl, self_signed

pytestmark = pytest.mark.e2e


def signed_by_ca(directory: Path, name: str, extension: str) -> None:
    """`name`.crt and `name`.key in `directory`, signed by its ca.crt, of subject /CN=`name`."""
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}", cwd=directory,
    )  # fmt: skip
    (directory / f"{name}.ext").write_text(extension + "\n")
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext", cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    self_signed(d, "/CN=test-ca", cert="ca.crt", key="ca.key")
    signed_by_ca(d, "server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    signed_by_ca(d, "client", "extendedKeyUsage=clientAuth")
    return d


def web_config(tmp: Path, data: dict[str, object]) -> list[str]:
    path = tmp / "web.yml"
    path.write_text(yaml.safe_dump(data))
    return [f"--web.config.file={path}"]


@contextmanager
def serving_tls(
    tmp_path: Path, pki: Path, *flags: str, users: dict[str, str] | None = None, **tls: object
) -> Iterator[tuple[Exporter, str]]:
    """The CLI, no target, serving TLS with the CA's server certificate (`tls`: more keys of
    tls_server_config; `users`: basic_auth_users), and its https URL."""
    web: dict[str, object] = {
        "tls_server_config": {
            "cert_file": str(pki / "server.crt"),
            "key_file": str(pki / "server.key"),
            **tls,
        }
    }
    if users:
        web["basic_auth_users"] = users
    extra = [*web_config(tmp_path, web), *flags]
    with exporter(tmp_path, {"targets": []}, extra=extra, wait_ready=False) as exp:
        yield exp, exp.url.replace("http://", "https://")


def test_tls_and_basic_auth_guard_metrics_and_api(tmp_path: Path, pki: Path) -> None:
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode()
    with serving_tls(tmp_path, pki, users={"prometheus": hashed}) as (exp, url):
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        from tests.harness import wait_for

        wait_for(lambda: httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200, what="TLS up")
        with pytest.raises(httpx.ConnectError):  # not our CA: the handshake is refused
            httpx.get(f"{url}/metrics", timeout=2)
        with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP to a TLS port
            httpx.get(f"{exp.url}/metrics", timeout=2)
        assert httpx.get(f"{url}/metrics", verify=ctx, timeout=5).status_code == 401
        assert (
            httpx.get(f"{url}/metrics", verify=ctx, auth=("prometheus", "wrong"), timeout=5).status_code
            == 401
        )
        assert (
            httpx.get(f"{url}/api/v1/jobs", verify=ctx, auth=("nobody", "s3cret-pass"), timeout=5).status_code
            == 401
        )
        ok = httpx.get(f"{url}/metrics", verify=ctx, auth=("prometheus", "s3cret-pass"), timeout=5)
        assert ok.status_code == 200 and "asyncjob_exporter_build_info" in ok.text
        assert (
            httpx.get(
                f"{url}/api/v1/jobs", verify=ctx, auth=("prometheus", "s3cret-pass"), timeout=5
            ).status_code
            == 200
        )
        assert "s3cret-pass" not in exp.output()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(tmp_path: Path, pki: Path) -> None:
    ca, required = str(pki / "ca.crt"), "RequireAndVerifyClientCert"
    with serving_tls(tmp_path, pki, client_ca_file=ca, client_auth_type=required) as (_, url):
        from tests.harness import wait_for

        with_cert = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with_cert.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
        wait_for(
            lambda: httpx.get(f"{url}/metrics", verify=with_cert, timeout=2).status_code == 200, what="mTLS"
        )
        without = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
            httpx.get(f"{url}/metrics", verify=without, timeout=2)


def test_a_bad_web_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    import sys

    path = tmp_path / "web.yml"
    path.write_text("basic_auth_users:\n  admin: plaintext\n")
    cfg = tmp_path / "c.yml"
    cfg.write_text("targets: []\n")
    r = subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={cfg}", f"--web.config.file={path}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "basic_auth_users.admin" in r.stderr and "plaintext" not in r.stderr


def run_cli(tmp_path: Path, web: dict[str, object]) -> subprocess.CompletedProcess[str]:
    import sys

    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(web))
    cfg = tmp_path / "c.yml"
    cfg.write_text("targets: []\n")
    return subprocess.run(
        [sys.executable, "-m", "exporter", f"--config.file={cfg}", f"--web.config.file={path}"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_bad_certificate_exits_2_in_one_line(tmp_path: Path, pki: Path) -> None:
    # A key that does not belong to the certificate, then a certificate that is not one.
    (tmp_path / "garbage.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    )
    for cert, key in (
        (pki / "server.crt", pki / "client.key"),
        (tmp_path / "garbage.crt", pki / "server.key"),
    ):
        r = run_cli(tmp_path, {"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}})
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("--web.config.file: tls_server_config"), (
            r.stderr
        )
        assert "Traceback" not in r.stderr


def test_min_version_is_honoured_in_the_handshake(tmp_path: Path, pki: Path) -> None:
    with serving_tls(tmp_path, pki, min_version="TLS13") as (_, url):
        from tests.harness import wait_for

        tls13 = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        wait_for(
            lambda: httpx.get(f"{url}/healthz", verify=tls13, timeout=2).status_code == 200, what="TLS up"
        )
        tls12 = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        tls12.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", verify=tls12, timeout=2)


def test_cipher_suites_are_honoured_in_the_handshake(tmp_path: Path, pki: Path) -> None:
    suites = ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
    with serving_tls(tmp_path, pki, max_version="TLS12", cipher_suites=suites) as (_, url):
        from tests.harness import wait_for

        allowed = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        allowed.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384")
        wait_for(
            lambda: httpx.get(f"{url}/healthz", verify=allowed, timeout=2).status_code == 200, what="TLS"
        )
        other = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        other.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/healthz", verify=other, timeout=2)


def test_the_api_token_rides_beside_basic_credentials(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    extra = web_config(tmp_path, {"basic_auth_users": {"prom": hashed}})
    cfg = {"targets": [], "api": {"token_file": str(token)}}
    with exporter(tmp_path, cfg, extra=extra, wait_ready=False) as exp:
        from tests.harness import wait_for

        wait_for(lambda: httpx.get(f"{exp.url}/healthz", timeout=2).status_code == 200, what="up")
        get = exp.api
        assert get("GET", "/api/v1/jobs", auth=("prom", "pw")).status_code == 401
        r = get("GET", "/api/v1/jobs", auth=("prom", "pw"), headers={"X-Asyncjob-Token": "t0ken"})
        assert r.status_code == 200


def test_a_tls_client_that_never_says_hello_is_closed_after_the_header_timeout(
    tmp_path: Path, pki: Path
) -> None:
    import socket

    with serving_tls(tmp_path, pki, "--web.read-header-timeout=1s") as (exp, url):
        from tests.harness import wait_for

        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        wait_for(lambda: httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200, what="TLS up")
        host, port = exp.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as s:
            # asyncio's own handshake deadline is 60 s: the socket timeout (10 s) would pass first.
            import contextlib

            with contextlib.suppress(ConnectionResetError):  # closed by a reset: closed all the same
                assert s.recv(1) == b""


def test_sighup_reads_the_web_config_afresh_a_removed_user_gets_401_and_a_new_certificate_serves(
    tmp_path: Path, pki: Path
) -> None:
    import signal

    from tests.harness import wait_for

    # A second server certificate from the same CA, told apart by its subject.
    signed_by_ca(pki, "rotated", "subjectAltName=IP:127.0.0.1,DNS:localhost")
    users = {
        "alice": bcrypt.hashpw(b"a-pass", bcrypt.gensalt(rounds=4)).decode(),
        "bob": bcrypt.hashpw(b"b-pass", bcrypt.gensalt(rounds=4)).decode(),
    }

    def write(cert: str, names: list[str]) -> None:
        data = {
            "tls_server_config": {
                "cert_file": str(pki / f"{cert}.crt"),
                "key_file": str(pki / f"{cert}.key"),
            },
            "basic_auth_users": {name: users[name] for name in names},
        }
        (tmp_path / "web.yml").write_text(yaml.safe_dump(data))

    def served_subject(url: str, ctx: ssl.SSLContext) -> str:
        import socket

        host, port = url.removeprefix("https://").split(":")
        with (
            socket.create_connection((host, int(port)), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=host) as s,
        ):
            cert = s.getpeercert()
        assert cert is not None
        # typeshed gives every field of the certificate the union of them all; subject is RDNs.
        subject = cast("tuple[tuple[tuple[str, str], ...], ...]", cert["subject"])
        return dict(pair[0] for pair in subject)["commonName"]

    write("server", ["alice", "bob"])
    extra = [f"--web.config.file={tmp_path / 'web.yml'}"]
    with exporter(tmp_path, {"targets": []}, extra=extra, wait_ready=False) as exp:
        url = exp.url.replace("http://", "https://")
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        wait_for(lambda: httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200, what="TLS up")
        with httpx.Client(verify=ctx, timeout=5) as bob:  # one connection, kept open across the reload
            assert bob.get(f"{url}/metrics", auth=("bob", "b-pass")).status_code == 200
            assert served_subject(url, ctx) == "server"

            write("rotated", ["alice"])
            exp.popen.send_signal(signal.SIGHUP)
            wait_for(lambda: "config reloaded" in exp.output(), what="the reload")
            assert bob.get(f"{url}/metrics", auth=("bob", "b-pass")).status_code == 401
        assert httpx.get(f"{url}/metrics", verify=ctx, auth=("bob", "b-pass"), timeout=5).status_code == 401
        assert httpx.get(f"{url}/metrics", verify=ctx, auth=("alice", "a-pass"), timeout=5).status_code == 200
        assert served_subject(url, ctx) == "rotated"

        # A web config that does not load changes nothing: alice still gets in.
        (tmp_path / "web.yml").write_text("basic_auth_users:\n  alice: plaintext\n")
        exp.popen.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reload failed" in exp.output(), what="the failed reload")
        assert httpx.get(f"{url}/metrics", verify=ctx, auth=("alice", "a-pass"), timeout=5).status_code == 200
        assert (
            "asyncjob_config_last_reload_successful 0"
            in httpx.get(f"{url}/metrics", verify=ctx, auth=("alice", "a-pass"), timeout=5).text
        )


def open_fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def test_tls_connections_the_server_closes_release_their_descriptors_at_once(
    tmp_path: Path, pki: Path
) -> None:
    """The server closes 40 TLS connections whose clients stay silent (the header timeout):
    their descriptors come back while the clients still hold their sockets. asyncio waited up
    to 30 s for each client's close_notify, holding the descriptor meanwhile."""
    import socket
    from contextlib import ExitStack

    from tests.harness import wait_for

    with serving_tls(tmp_path, pki, "--web.read-header-timeout=3s") as (exp, url), ExitStack() as stack:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        wait_for(lambda: httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200, what="TLS up")
        pid = exp.popen.pid
        baseline = open_fds(pid)
        host, port = exp.url.removeprefix("http://").split(":")
        peak = baseline
        for _ in range(40):
            raw = stack.enter_context(socket.create_connection((host, int(port)), timeout=10))
            stack.enter_context(ctx.wrap_socket(raw, server_hostname="127.0.0.1"))  # the handshake
            peak = max(peak, open_fds(pid))
        assert peak >= baseline + 30  # most are open at once (the first may be closed already)
        # Closed by the server after 3 s; given back well before asyncio's 30 s more.
        wait_for(lambda: open_fds(pid) <= baseline + 2, timeout=15, what="descriptors given back")


def test_connections_in_a_tls_handshake_count_against_the_cap(tmp_path: Path, pki: Path) -> None:
    """20 clients connect to a TLS port capped at 8 and never say hello: the oldest are closed
    to make room (before, a handshake was not a connection until it ended, and held its
    descriptor for the whole handshake timeout), and a scrape still gets in."""
    import socket
    from contextlib import ExitStack

    from tests.e2e.test_connections import closed_by_server
    from tests.harness import wait_for

    flags = ("--web.read-header-timeout=60s", "--web.max-connections=8")
    with serving_tls(tmp_path, pki, *flags) as (exp, url), ExitStack() as stack:
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        wait_for(lambda: httpx.get(f"{url}/healthz", verify=ctx, timeout=2).status_code == 200, what="TLS up")
        host, port = exp.url.removeprefix("http://").split(":")
        silent = [
            stack.enter_context(socket.create_connection((host, int(port)), timeout=10)) for _ in range(20)
        ]
        assert httpx.get(f"{url}/healthz", verify=ctx, timeout=10).status_code == 200
        for s in silent[:12]:
            s.settimeout(5)  # far below the 60 s handshake timeout
            assert closed_by_server(s)
        assert "connection cap reached" in exp.output()
