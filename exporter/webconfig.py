"""`--web.config.file` in the Prometheus exporter-toolkit format, read and checked: TLS
(optionally mTLS) as an SSLContext, basic auth users with bcrypt hashes, and response headers,
for every endpoint but /healthz.

Every key of the format is honoured or refused at start, never ignored. The headers are added
to each response by `ResponseHeadersMiddleware` below, the users checked at each request by
exporter/basic_auth.py; a reload reads the file again through exporter/webconfig_reload.py."""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any

import yaml
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from exporter.basic_auth import BasicAuthMiddleware

# exporter-toolkit's client_auth_type values → ssl verify modes.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's names of the TLS 1.0-1.2 cipher suites (crypto/tls) → OpenSSL's. TLS 1.3 suites are
# not configurable, in Go as in OpenSSL's cipher list.
_CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_TLS_KEYS = {
    "cert_file",
    "key_file",
    "client_ca_file",
    "client_auth_type",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
}
# exporter-toolkit keys this exporter cannot honour: refused with the reason.
_TLS_UNSUPPORTED = {
    "curve_preferences": "not supported (OpenSSL's default curves are used); remove it",
    "client_allowed_sans": "not supported; use client_ca_file to choose who may connect",
    "cert": "inline certificates are not supported; use cert_file",
    "key": "inline keys are not supported; use key_file",
}
# Response headers exporter-toolkit lets http_server_config.headers set.
_HEADERS = {
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
}
_BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


class WebConfigError(ValueError):
    pass


@dataclass
class WebConfig:
    """What a web config file says, checked."""

    ssl: dict[str, Any] = field(default_factory=dict)
    users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    context: SSLContext | None = None  # tls_server_config's, None without TLS

    def middleware(self) -> list[Middleware]:
        out = []
        if self.headers:
            out.append(Middleware(ResponseHeadersMiddleware, headers=self.headers))
        if self.users:
            out.append(Middleware(BasicAuthMiddleware, users=self.users))
        return out


def load_web_config(path: str | None) -> WebConfig:
    """Read and check a web config file; every problem is a WebConfigError of one line."""
    if not path:
        return WebConfig()
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise WebConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise WebConfigError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise WebConfigError(f"{path}: expected a mapping")
    unknown = set(data) - {"tls_server_config", "basic_auth_users", "http_server_config"}
    if unknown:
        raise WebConfigError(f"{sorted(map(str, unknown))[0]}: unknown key")
    out = WebConfig()
    tls = data.get("tls_server_config")
    if tls:
        if not isinstance(tls, dict):
            raise WebConfigError("tls_server_config: expected a mapping")
        context = tls_context(tls)
        out.context = context
        out.ssl = {"ssl_context_factory": lambda config, default: context}
    out.headers = _http_server_config(data.get("http_server_config"))
    users = data.get("basic_auth_users") or {}
    if not isinstance(users, dict):
        raise WebConfigError("basic_auth_users: expected a mapping of user to bcrypt hash")
    for user, hashed in users.items():
        # Checked here, not at the first request: a malformed hash would answer 500 later.
        if not isinstance(hashed, str) or not _BCRYPT.match(hashed):
            raise WebConfigError(f"basic_auth_users.{user}: expected a bcrypt hash ($2a$, $2b$ or $2y$)")
        out.users[str(user)] = hashed.encode()
    return out


def tls_context(tls: dict[str, Any]) -> ssl.SSLContext:
    """An SSLContext from exporter-toolkit's tls_server_config; TLS 1.2 at least by default,
    as exporter-toolkit."""
    for key in tls:
        if key in _TLS_UNSUPPORTED:
            raise WebConfigError(f"tls_server_config.{key}: {_TLS_UNSUPPORTED[key]}")
        if key not in _TLS_KEYS:
            raise WebConfigError(f"tls_server_config.{key}: unknown key")
    cert, key_file = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key_file:
        raise WebConfigError("tls_server_config: cert_file and key_file are both required")
    for name in ("cert_file", "key_file", "client_ca_file"):
        if tls.get(name) and not Path(str(tls[name])).is_file():
            raise WebConfigError(f"tls_server_config.{name}: cannot read {tls[name]}")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(str(cert), str(key_file))
    except (ssl.SSLError, OSError, ValueError) as e:
        raise WebConfigError(
            f"tls_server_config: cannot load cert_file {cert} with key_file {key_file}: {_ssl_reason(e)}"
        ) from None
    auth_type = tls.get("client_auth_type", "NoClientCert")
    if auth_type not in _CLIENT_AUTH:
        raise WebConfigError(f"tls_server_config.client_auth_type: one of {', '.join(_CLIENT_AUTH)}")
    ca = tls.get("client_ca_file")
    if ca:
        try:
            ctx.load_verify_locations(cafile=str(ca))
        except (ssl.SSLError, OSError, ValueError) as e:
            raise WebConfigError(f"tls_server_config.client_ca_file: {_ssl_reason(e)}") from None
        ctx.verify_mode = _CLIENT_AUTH[auth_type]
    elif auth_type != "NoClientCert":
        # OpenSSL verifies every certificate it asks for: without a CA it can only refuse them all.
        raise WebConfigError(f"tls_server_config.client_ca_file: required by client_auth_type {auth_type}")
    ctx.minimum_version = _version(tls, "min_version", "TLS12")
    ctx.maximum_version = _version(tls, "max_version", "TLS13")
    if ctx.minimum_version > ctx.maximum_version:
        raise WebConfigError("tls_server_config.max_version: lower than min_version")
    suites = tls.get("cipher_suites")
    if suites is not None:
        if not isinstance(suites, list) or not suites:
            raise WebConfigError("tls_server_config.cipher_suites: expected a list of cipher suite names")
        names = []
        for suite in suites:
            if suite not in _CIPHER_SUITES:
                raise WebConfigError(
                    f"tls_server_config.cipher_suites: {suite!r} is not a TLS 1.2 suite this exporter "
                    "knows (Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"
                )
            names.append(_CIPHER_SUITES[suite])
        try:
            ctx.set_ciphers(":".join(names))
        except ssl.SSLError:
            raise WebConfigError(
                "tls_server_config.cipher_suites: none of these suites is available in this OpenSSL"
            ) from None
    prefer = tls.get("prefer_server_cipher_suites")
    if prefer is not None and not isinstance(prefer, bool):
        raise WebConfigError("tls_server_config.prefer_server_cipher_suites: expected true or false")
    if prefer:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    return ctx


def _version(tls: dict[str, Any], key: str, default: str) -> ssl.TLSVersion:
    value = tls.get(key, default)
    if value not in _TLS_VERSIONS:
        raise WebConfigError(f"tls_server_config.{key}: one of {', '.join(_TLS_VERSIONS)}")
    return _TLS_VERSIONS[value]


def _ssl_reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return e.reason or str(e)
    if isinstance(e, OSError):
        return e.strerror or str(e)
    return str(e)


def _http_server_config(http: Any) -> dict[str, str]:
    if not http:
        return {}
    if not isinstance(http, dict):
        raise WebConfigError("http_server_config: expected a mapping")
    for key in http:
        if key not in ("http2", "headers"):
            raise WebConfigError(f"http_server_config.{key}: unknown key")
    if http.get("http2"):
        raise WebConfigError("http_server_config.http2: HTTP/2 is not served; set it to false or remove it")
    headers = http.get("headers") or {}
    if not isinstance(headers, dict):
        raise WebConfigError("http_server_config.headers: expected a mapping of header to value")
    for name, value in headers.items():
        if name not in _HEADERS:
            raise WebConfigError(f"http_server_config.headers.{name}: one of {', '.join(sorted(_HEADERS))}")
        if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
            raise WebConfigError(f"http_server_config.headers.{name}: expected one line of text")
    return {str(k): str(v) for k, v in headers.items()}


def encoded_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    """http_server_config.headers as ASGI sends them."""
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


class ResponseHeadersMiddleware:
    """Adds http_server_config.headers to every response."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | list[tuple[bytes, bytes]]) -> None:
        self.app = app
        # A list is shared with LiveWebConfig, which changes it in place at a reload.
        self.headers = headers if isinstance(headers, list) else encoded_headers(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.headers:
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, with_headers)
