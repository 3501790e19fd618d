"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS (optionally mTLS) and
basic auth users with bcrypt hashes, for every endpoint but /healthz."""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

# exporter-toolkit's client_auth_type values → ssl verify modes.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_UNAUTHENTICATED = ("/healthz",)


class WebConfigError(ValueError):
    pass


@dataclass
class WebConfig:
    ssl: dict[str, Any] = field(default_factory=dict)
    users: dict[str, bytes] = field(default_factory=dict)

    def middleware(self) -> list[Middleware]:
        return [Middleware(BasicAuthMiddleware, users=self.users)] if self.users else []


def load_web_config(path: str | None) -> WebConfig:
    if not path:
        return WebConfig()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise WebConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise WebConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping")
    unknown = set(data) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"{sorted(unknown)[0]}: unknown key")
    out = WebConfig()
    tls = data.get("tls_server_config")
    if tls:
        if not isinstance(tls, dict):
            raise WebConfigError("tls_server_config: expected a mapping")
        cert, key = tls.get("cert_file"), tls.get("key_file")
        if not cert or not key:
            raise WebConfigError("tls_server_config: cert_file and key_file are both required")
        for name in ("cert_file", "key_file", "client_ca_file"):
            if tls.get(name) and not Path(tls[name]).is_file():
                raise WebConfigError(f"tls_server_config.{name}: cannot read {tls[name]}")
        out.ssl = {"ssl_certfile": cert, "ssl_keyfile": key}
        auth_type = tls.get("client_auth_type", "NoClientCert")
        if auth_type not in _CLIENT_AUTH:
            raise WebConfigError(f"tls_server_config.client_auth_type: one of {', '.join(_CLIENT_AUTH)}")
        if tls.get("client_ca_file"):
            out.ssl["ssl_ca_certs"] = tls["client_ca_file"]
            out.ssl["ssl_cert_reqs"] = _CLIENT_AUTH[auth_type]
        elif auth_type.startswith(("Require", "Verify")) and auth_type != "RequireAnyClientCert":
            raise WebConfigError(
                "tls_server_config.client_ca_file: required by client_auth_type " + auth_type
            )
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError("basic_auth_users: expected a mapping of user to bcrypt hash")
    for user, hashed in users.items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"basic_auth_users.{user}: expected a bcrypt hash")
        out.users[str(user)] = hashed.encode()
    return out


class BasicAuthMiddleware:
    """HTTP basic auth against bcrypt hashes; successful checks are cached so a scrape does
    not pay bcrypt's deliberate cost every time."""

    def __init__(self, app: ASGIApp, users: dict[str, bytes]) -> None:
        self.app = app
        self.users = users
        self._ok: set[bytes] = set()

    def _check(self, header: bytes) -> bool:
        import bcrypt

        if header in self._ok:
            return True
        if not header.startswith(b"Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None or not bcrypt.checkpw(password.encode(), hashed):
            return False
        if len(self._ok) < 64:
            self._ok.add(header)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNAUTHENTICATED:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        if self._check(header):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="asyncjob-exporter"'),
                    (b"content-type", b"text/plain"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"Unauthorized\n"})
