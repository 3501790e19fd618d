"""Connections that never finish their request: closed after --web.read-header-timeout, capped by
--web.max-connections; out of file descriptors, accept errors are logged once per burst and
/metrics answers again once they are freed. Through the real CLI."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.harness import ROOT, exporter, free_port, wait_for

pytestmark = pytest.mark.e2e


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


def closed_by_server(s: socket.socket) -> bool:
    """True when the server closes the connection (recv returns b"" or the peer resets);
    False when nothing happens within the socket's timeout."""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("sent", [b"", b"GET /metr", b"GET /metrics HTTP/1.1\r\nHost: x\r\n"])
def test_a_connection_that_never_finishes_its_headers_is_closed(tmp_path: Path, sent: bytes) -> None:
    with exporter(tmp_path, {"targets": []}, extra=["--web.read-header-timeout=1s"]) as exp:
        s = connect(exp.url)
        s.sendall(sent)
        assert closed_by_server(s)
        s.close()


def test_half_a_second_request_on_a_kept_alive_connection_is_closed(tmp_path: Path) -> None:
    with exporter(tmp_path, {"targets": []}, extra=["--web.read-header-timeout=1s"]) as exp:
        s = connect(exp.url)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /heal")  # stops uvicorn's keep-alive timer; ours runs on
        assert closed_by_server(s)
        s.close()


def test_a_connection_that_keeps_sending_requests_stays_open_then_idle_it_is_closed(tmp_path: Path) -> None:
    """Each request starts the wait for the next one's headers afresh: requests 0.4 s apart
    outlive a 1 s header timeout many times over; the connection is closed once they stop."""
    with exporter(tmp_path, {"targets": []}, extra=["--web.read-header-timeout=1s"]) as exp:
        s = connect(exp.url)
        for _ in range(7):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += (data := s.recv(4096))
                assert data, "closed while requests keep coming"
            head, _, body = answer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += (data := s.recv(4096))
                assert data, "closed while requests keep coming"
            assert head.startswith(b"HTTP/1.1 200")
            time.sleep(0.4)
        s.sendall(b"GET /heal")
        assert closed_by_server(s)
        s.close()


def test_a_body_that_trickles_is_cut_after_the_same_time_without_a_traceback(tmp_path: Path) -> None:
    cfg = {"targets": [{"name": "t", "provider": "willsuite", "base_url": "http://127.0.0.1:9", "jobs": []}]}
    with exporter(tmp_path, cfg, extra=["--web.read-header-timeout=1s"], wait_ready=False) as exp:
        wait_for(lambda: httpx.get(f"{exp.url}/healthz", timeout=1).status_code == 200, what="up")
        s = connect(exp.url)
        s.sendall(
            b"POST /api/v1/targets/t/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"id": '
        )
        assert closed_by_server(s)
        s.close()
        assert exp.popen.poll() is None
        assert "Traceback" not in exp.output()


def test_past_the_connection_cap_the_oldest_idle_connection_makes_room(tmp_path: Path) -> None:
    extra = ["--web.read-header-timeout=60s", "--web.max-connections=8"]
    with exporter(tmp_path, {"targets": []}, extra=extra) as exp, ExitStack() as stack:
        idle = [stack.enter_context(connect(exp.url)) for _ in range(20)]
        # Held open and silent, they would keep /metrics out for a minute; the cap closes them.
        r = httpx.get(f"{exp.url}/metrics", timeout=10)
        assert r.status_code == 200
        for s in idle[:5]:
            s.settimeout(10)
            assert closed_by_server(s)


@contextmanager
def exporter_with_fd_limit(tmp_path: Path, limit: int, extra: list[str]) -> Iterator[tuple[str, Path]]:
    port = free_port()
    cfg = tmp_path / "c.yml"
    cfg.write_text("targets: []\n")
    log = tmp_path / "exporter.log"

    def lower_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOB_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "exporter",
                f"--config.file={cfg}",
                f"--web.listen-address=127.0.0.1:{port}",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=env,
            preexec_fn=lower_limit,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, what="exporter")
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def test_out_of_file_descriptors_accept_errors_are_one_line_and_metrics_come_back(tmp_path: Path) -> None:
    # A cap above the descriptor limit, so accepts fail with EMFILE.
    extra = ["--web.read-header-timeout=60s", "--web.max-connections=10000"]
    with exporter_with_fd_limit(tmp_path, 96, extra) as (url, log), ExitStack() as stack:
        held = []
        for _ in range(150):
            try:
                held.append(stack.enter_context(connect(url)))
            except OSError:
                break
        time.sleep(3)  # three of asyncio's one-second accept retries, all failing
        text = log.read_text(errors="replace")
        assert "is not below the open-files limit" in text  # said at start
        assert text.count("cannot accept connections") == 1, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        for s in held:
            s.close()
        stack.close()
        r = wait_for(lambda: httpx.get(f"{url}/metrics", timeout=2), what="/metrics after the burst")
        assert r.status_code == 200
