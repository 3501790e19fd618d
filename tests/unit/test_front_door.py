"""The front door: lifecycle endpoint, API token, body media types and basic auth, through the
real Starlette app."""

from __future__ import annotations

import base64
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from starlette.testclient import TestClient

from exporter.basic_auth import BasicAuthMiddleware
from exporter.config import build_settings
from exporter.providers import PROVIDERS
from exporter.routes import build_app
from exporter.runtime import Runtime
from exporter.webconfig import WebConfig, WebConfigError, load_web_config
from tests import tools


def runtime(tmp_path: Path, token: str | None = None) -> Runtime:
    data: dict[str, object] = {"targets": [{"name": "b", "provider": "basiq", "base_url": "https://x"}]}
    if token is not None:
        (tmp_path / "token").write_text(token + "\n")
        data["api"] = {"token_file": str(tmp_path / "token")}
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump(data))
    settings = build_settings(data, PROVIDERS)
    rt = Runtime(settings, str(config))
    rt.tracker.set_target(settings.resolved(settings.targets[0]))
    rt.reload = lambda: []  # type: ignore[method-assign]  # the scheduler is not running here
    return rt


def test_reload_over_http_is_refused_without_the_lifecycle_flag(tmp_path: Path) -> None:
    client = TestClient(build_app(runtime(tmp_path)))
    r = client.post("/-/reload")
    assert r.status_code == 403 and "Lifecycle API is not enabled" in r.text


def test_reload_over_http_is_served_with_the_lifecycle_flag(tmp_path: Path) -> None:
    client = TestClient(build_app(runtime(tmp_path), lifecycle=True))
    assert client.post("/-/reload").status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        ({"Authorization": "Bearer t0ken"}, 200),
    ],
)
def test_reload_over_http_asks_for_the_api_token_when_one_is_set(
    tmp_path: Path, headers: dict[str, str], status: int
) -> None:
    client = TestClient(build_app(runtime(tmp_path, token="t0ken"), lifecycle=True))
    assert client.post("/-/reload", headers=headers).status_code == status


# --- body media types ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("application/json", 202),
        ("application/json; charset=utf-8", 202),
        ("Application/JSON;charset=UTF-8", 202),
        ("application/vnd.api+json", 202),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("text/plain", 415),
        ("application/jsonp", 415),
        (None, 415),
    ],
)
def test_the_api_reads_json_bodies_only(tmp_path: Path, content_type: str | None, status: int) -> None:
    client = TestClient(build_app(runtime(tmp_path)))
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/api/v1/targets/b/jobs", content=b'{"id": "1"}', headers=headers)
    assert r.status_code == status, r.text


# --- API token beside basic auth -------------------------------------------------------------


def hashed(password: bytes, rounds: int = 4) -> str:
    import bcrypt

    return str(bcrypt.hashpw(password, bcrypt.gensalt(rounds=rounds)).decode())


def web(tmp_path: Path, data: dict[str, object]) -> WebConfig:
    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump(data))
    return load_web_config(str(path))


def test_the_api_token_rides_beside_basic_credentials(tmp_path: Path) -> None:
    config = web(tmp_path, {"basic_auth_users": {"prom": hashed(b"pw")}})
    client = TestClient(build_app(runtime(tmp_path, token="t0ken"), config.middleware()))
    basic = ("prom", "pw")
    assert client.get("/api/v1/jobs", auth=basic).status_code == 401
    assert client.get("/api/v1/jobs", auth=basic, headers={"X-Asyncjob-Token": "nope"}).status_code == 401
    assert client.get("/api/v1/jobs", auth=basic, headers={"X-Asyncjob-Token": "t0ken"}).status_code == 200
    # Without basic credentials the token alone opens nothing.
    assert client.get("/api/v1/jobs", headers={"X-Asyncjob-Token": "t0ken"}).status_code == 401
    assert client.get("/metrics", auth=basic).status_code == 200


def test_a_registration_passes_basic_auth_the_token_and_the_configured_response_headers(
    tmp_path: Path,
) -> None:
    config = web(
        tmp_path,
        {
            "basic_auth_users": {"prom": hashed(b"pw")},
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
        },
    )
    client = TestClient(build_app(runtime(tmp_path, token="t0ken"), config.middleware()))
    url, body, token = "/api/v1/targets/b/jobs", {"id": "job-1"}, {"X-Asyncjob-Token": "t0ken"}
    r = client.post(url, json=body, headers=token)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    r = client.post(url, json=body, auth=("prom", "wrong"), headers=token)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    r = client.post(url, json=body, auth=("prom", "pw"))
    assert r.status_code == 401 and "X-Asyncjob-Token" in r.json()["error"]
    r = client.post(url, json=body, auth=("prom", "pw"), headers=token)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == "job-1" and r.json()["target"] == "b"
    assert r.headers["x-frame-options"] == "deny" and r.headers["content-type"] == "application/json"
    # Unknown targets and other methods on the same path answer as before.
    assert (
        client.post("/api/v1/targets/nope/jobs", json=body, auth=("prom", "pw"), headers=token).status_code
        == 404
    )
    assert client.get(url, auth=("prom", "pw"), headers=token).status_code == 405


def test_a_bearer_token_still_works_without_basic_auth(tmp_path: Path) -> None:
    client = TestClient(build_app(runtime(tmp_path, token="t0ken")))
    assert client.get("/api/v1/jobs", headers={"Authorization": "bearer t0ken"}).status_code == 200
    assert client.get("/api/v1/jobs", headers={"Authorization": "Basic t0ken"}).status_code == 401


# --- basic auth ------------------------------------------------------------------------------


class CountingBcrypt:
    """Stands in for bcrypt.checkpw: counts calls, records the thread they ran on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import bcrypt

        self.calls: list[tuple[bytes, int]] = []
        real = bcrypt.checkpw

        def checkpw(password: bytes, hashed: bytes) -> bool:
            self.calls.append((hashed, threading.get_ident()))
            return bool(real(password, hashed))

        monkeypatch.setattr(bcrypt, "checkpw", checkpw)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


@pytest.mark.anyio
async def test_bcrypt_runs_in_a_worker_thread_and_success_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    bcrypt_calls = CountingBcrypt(monkeypatch)
    auth = BasicAuthMiddleware(noop_app, {"prom": hashed(b"pw").encode()})
    assert await auth.check(basic("prom", "pw"))
    assert await auth.check(basic("prom", "pw"))
    assert len(bcrypt_calls.calls) == 1  # the second check came from the cache
    assert bcrypt_calls.calls[0][1] != threading.get_ident()
    assert not await auth.check(basic("prom", "wrong"))
    assert not await auth.check(basic("prom", "wrong"))
    assert len(bcrypt_calls.calls) == 3  # failures are never cached


@pytest.mark.anyio
async def test_an_unknown_user_costs_a_bcrypt_of_the_configured_cost(monkeypatch: pytest.MonkeyPatch) -> None:
    bcrypt_calls = CountingBcrypt(monkeypatch)
    auth = BasicAuthMiddleware(noop_app, {"prom": hashed(b"pw", rounds=5).encode()})
    assert not await auth.check(basic("nobody", "pw"))
    assert len(bcrypt_calls.calls) == 1
    assert bcrypt_calls.calls[0][0].startswith(b"$2b$05$")  # the dummy hash, at the users' cost


@pytest.mark.anyio
async def test_the_event_loop_runs_while_bcrypt_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import anyio
    import bcrypt

    release = threading.Event()

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        # Holds until the event loop, not blocked by us, runs the task that releases us.
        return release.wait(10)

    monkeypatch.setattr(bcrypt, "checkpw", slow_checkpw)
    auth = BasicAuthMiddleware(noop_app, {"prom": hashed(b"pw").encode()})

    async def release_soon() -> None:
        await anyio.sleep(0.01)
        release.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(release_soon)
            assert await auth.check(basic("prom", "pw"))


async def noop_app(scope: Any, receive: Any, send: Any) -> None:
    return None


@pytest.mark.parametrize(
    ("hash_", "why"),
    [
        ("plaintext", "expected a bcrypt hash"),
        ("$2b$10$short", "expected a bcrypt hash"),
        ("$2b$99$" + "a" * 53, "expected a bcrypt hash"),
        ("$1$md5crypt$abcdefghijklmnop", "expected a bcrypt hash"),
    ],
)
def test_a_malformed_hash_is_refused_at_start_naming_the_user(tmp_path: Path, hash_: str, why: str) -> None:
    with pytest.raises(WebConfigError) as e:
        web(tmp_path, {"basic_auth_users": {"admin": hash_}})
    assert str(e.value).startswith("basic_auth_users.admin:") and why in str(e.value)
    assert hash_ not in str(e.value)


# --- TLS settings: honoured or refused -------------------------------------------------------


@pytest.mark.parametrize(
    ("tls", "key"),
    [
        ({"min_version": "TLS14"}, "tls_server_config.min_version"),
        ({"min_version": "TLS13", "max_version": "TLS12"}, "tls_server_config.max_version"),
        ({"cipher_suites": ["TLS_FAKE"]}, "tls_server_config.cipher_suites"),
        ({"curve_preferences": ["X25519"]}, "tls_server_config.curve_preferences"),
        ({"client_allowed_sans": ["a"]}, "tls_server_config.client_allowed_sans"),
        ({"client_auth_type": "RequireAnyClientCert"}, "tls_server_config.client_ca_file"),
        ({"bogus": 1}, "tls_server_config.bogus"),
    ],
)
def test_tls_settings_are_honoured_or_refused_never_ignored(
    tmp_path: Path, self_signed: tuple[Path, Path], tls: dict[str, object], key: str
) -> None:
    cert, key_file = self_signed
    with pytest.raises(WebConfigError) as e:
        web(tmp_path, {"tls_server_config": {"cert_file": str(cert), "key_file": str(key_file), **tls}})
    assert str(e.value).startswith(key)


def test_tls_versions_and_suites_reach_the_context(tmp_path: Path, self_signed: tuple[Path, Path]) -> None:
    import ssl

    from exporter.webconfig import tls_context

    cert, key_file = self_signed
    ctx = tls_context(
        {
            "cert_file": str(cert),
            "key_file": str(key_file),
            "min_version": "TLS12",
            "max_version": "TLS12",
            "cipher_suites": ["TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"],
            "prefer_server_cipher_suites": True,
        }
    )
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.maximum_version == ssl.TLSVersion.TLSv1_2
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-RSA-AES256-GCM-SHA384"]
    assert ctx.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_http_server_config_headers_are_sent_and_http2_refused(tmp_path: Path) -> None:
    config = web(tmp_path, {"http_server_config": {"headers": {"X-Frame-Options": "deny"}}})
    client = TestClient(build_app(runtime(tmp_path), config.middleware()))
    assert client.get("/healthz").headers["x-frame-options"] == "deny"
    with pytest.raises(WebConfigError, match=r"^http_server_config.http2:"):
        web(tmp_path, {"http_server_config": {"http2": True}})


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tools.self_signed(tmp_path_factory.mktemp("tls"), "/CN=x")


# --- the API token file ----------------------------------------------------------------------


def token_config(tmp_path: Path, token: str) -> Path:
    (tmp_path / "token").write_text(token)
    config = tmp_path / "config.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "targets": [{"name": "b", "provider": "basiq", "base_url": "https://x"}],
                "api": {"token_file": str(tmp_path / "token")},
            }
        )
    )
    return config


def live_runtime(config: Path, web_config: Any = None) -> Runtime:
    from exporter.config import load_settings

    settings = load_settings(str(config), PROVIDERS)
    rt = Runtime(settings, str(config), web_config=web_config)
    for t in settings.targets:
        rt.tracker.set_target(settings.resolved(t))
    rt.scheduler.apply = lambda settings: None  # type: ignore[method-assign]  # not running here
    return rt


@pytest.mark.parametrize("content", ["", "\n", "  \t\n "])
def test_an_empty_or_blank_token_file_is_refused_at_start_and_by_check_config(
    tmp_path: Path, content: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter.commands import Web, check_config, run_exporter

    config = token_config(tmp_path, content)
    token = str(tmp_path / "token")
    assert check_config(str(config)) == 2
    assert f"api.token_file: {token} is empty or blank" in capsys.readouterr().err
    assert run_exporter(str(config), Web(listen="127.0.0.1:0"), 0, 1) == 2
    assert f"api.token_file: {token} is empty or blank" in capsys.readouterr().err


def test_a_reload_that_finds_the_token_file_emptied_fails_and_the_old_token_stays(tmp_path: Path) -> None:
    config = token_config(tmp_path, "t0ken\n")
    rt = live_runtime(config)
    client = TestClient(build_app(rt, lifecycle=True))
    bearer = {"Authorization": "Bearer t0ken"}
    (tmp_path / "token").write_text("   \n")
    r = client.post("/-/reload", headers=bearer)
    assert r.status_code == 400 and "is empty or blank" in r.json()["problems"][0]
    assert client.get("/api/v1/jobs", headers=bearer).status_code == 200
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/api/v1/jobs", headers={"X-Asyncjob-Token": ""}).status_code == 401
    (tmp_path / "token").write_text("n3w\n")
    assert client.post("/-/reload", headers=bearer).status_code == 200
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer n3w"}).status_code == 200
    assert client.get("/api/v1/jobs", headers=bearer).status_code == 401


def test_the_token_is_read_once_and_again_only_when_its_file_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from exporter.config import values

    monkeypatch.setattr(values, "TOKEN_CHECK_EVERY", 0.0)  # look at the file at every request
    reads: list[str] = []
    real = values.read_token

    def counting(path: str) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(values, "read_token", counting)
    config = token_config(tmp_path, "t0ken\n")
    rt = live_runtime(config)
    reads.clear()
    client = TestClient(build_app(rt))
    for _ in range(5):
        assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert reads == []  # no read per request

    token = tmp_path / "token"
    before = token.stat()
    token.write_text("n3wtk\n")  # as long as before, and its times put back: not seen as a change
    os.utime(token, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert reads == []
    os.utime(token, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer n3wtk"}).status_code == 200
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer t0ken"}).status_code == 401
    assert len(reads) == 1
    # A rotation caught half written (the file empty): the token read before stays, and an
    # empty header is no token.
    token.write_text("")
    for headers in ({"X-Asyncjob-Token": ""}, {"Authorization": "Bearer"}, {"Authorization": "Bearer  "}):
        assert client.get("/api/v1/jobs", headers=headers).status_code == 401
    assert client.get("/api/v1/jobs", headers={"Authorization": "Bearer n3wtk"}).status_code == 200


# --- POST /-/reload from another site --------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Content-Type": "multipart/form-data; boundary=x"}, 415),
        ({"Content-Type": "text/plain;charset=UTF-8"}, 415),
        ({"Content-Type": "TEXT/PLAIN"}, 415),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Sec-Fetch-Site": "same-site"}, 403),
        ({}, 200),  # curl -X POST, as Prometheus' docs show
        ({"Content-Type": "application/json"}, 200),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
    ],
)
def test_reload_without_a_token_refuses_what_a_browser_posts_from_another_site(
    tmp_path: Path, headers: dict[str, str], status: int
) -> None:
    client = TestClient(build_app(runtime(tmp_path), lifecycle=True))
    assert client.post("/-/reload", headers=headers, content=b"a=1").status_code == status


# --- the web config, read again at a reload --------------------------------------------------


def test_a_reload_reads_the_web_config_afresh_users_and_headers(tmp_path: Path) -> None:
    from exporter.webconfig_reload import LiveWebConfig

    path = tmp_path / "web.yml"
    both = {"alice": hashed(b"a"), "bob": hashed(b"b")}
    path.write_text(yaml.safe_dump({"basic_auth_users": both}))
    live = LiveWebConfig(str(path))
    config = tmp_path / "config.yml"
    config.write_text(yaml.safe_dump({"targets": []}))
    rt = live_runtime(config, live)
    client = TestClient(build_app(rt, live.middleware(), lifecycle=True))
    assert client.get("/metrics", auth=("bob", "b")).status_code == 200  # verified: cached now
    assert "x-frame-options" not in client.get("/healthz").headers

    path.write_text(
        yaml.safe_dump(
            {
                "basic_auth_users": {"alice": both["alice"]},
                "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
            }
        )
    )
    assert client.post("/-/reload", auth=("alice", "a")).status_code == 200
    assert client.get("/metrics", auth=("bob", "b")).status_code == 401  # the cache was not trusted
    assert client.get("/metrics", auth=("alice", "a")).status_code == 200
    assert client.get("/healthz").headers["x-frame-options"] == "deny"

    # A web config with a problem changes nothing, the config file's part neither.
    path.write_text(yaml.safe_dump({"basic_auth_users": {"alice": "plaintext"}}))
    config.write_text(
        yaml.safe_dump({"targets": [{"name": "n", "provider": "basiq", "base_url": "https://x"}]})
    )
    r = client.post("/-/reload", auth=("alice", "a"))
    assert r.status_code == 400 and r.json()["problems"] == [
        "--web.config.file: basic_auth_users.alice: expected a bcrypt hash ($2a$, $2b$ or $2y$)"
    ]
    assert client.get("/metrics", auth=("alice", "a")).status_code == 200
    assert rt.settings.targets == [] and not rt.last_reload_ok

    # Removing every user opens the door, as a web config without basic_auth_users does.
    path.write_text(yaml.safe_dump({}))
    assert client.post("/-/reload", auth=("alice", "a")).status_code == 200
    assert client.get("/metrics").status_code == 200


def test_turning_tls_on_at_a_reload_is_refused(tmp_path: Path, self_signed: tuple[Path, Path]) -> None:
    from exporter.webconfig_reload import LiveWebConfig

    path = tmp_path / "web.yml"
    path.write_text(yaml.safe_dump({}))
    live = LiveWebConfig(str(path))
    cert, key = self_signed
    path.write_text(yaml.safe_dump({"tls_server_config": {"cert_file": str(cert), "key_file": str(key)}}))
    with pytest.raises(WebConfigError, match=r"^tls_server_config: turning TLS on or off needs a restart"):
        live.read()
