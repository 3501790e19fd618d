"""`--web.config.file` in the Prometheus exporter-toolkit format: TLS (optionally mTLS) and
basic auth users with bcrypt hashes, for every endpoint but /healthz.

Every key of the format is honoured or refused at start, never ignored. bcrypt runs in a
worker thread, successful checks are cached, and an unknown user costs a bcrypt as a known
one does (user names cannot be told apart by timing)."""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import ssl
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from ssl import SSLContext
from typing import Any

import anyio
import yaml
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("asyncjob.web")

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
_UNAUTHENTICATED = ("/healthz",)
# Verified credentials kept (as SHA-256 digests of the header, never the password itself).
CACHE_SIZE = 256


class WebConfigError(ValueError):
    pass


@dataclass
class WebConfig:
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


class ReloadableContext(ssl.SSLContext):
    """The listener's SSLContext, whose every handshake runs on the context read last: asyncio
    starts a connection's TLS with `wrap_bio`, which is handed on to `current`. A reload's
    certificate, key, client CA, client auth type, versions and suites thus apply from the next
    connection on, as exporter-toolkit reads its file at each handshake; open connections keep
    theirs."""

    current: ssl.SSLContext

    def __new__(cls, current: ssl.SSLContext) -> ReloadableContext:
        context = super().__new__(cls, ssl.PROTOCOL_TLS_SERVER)
        context.current = current
        return context

    def __init__(self, current: ssl.SSLContext) -> None:
        super().__init__()

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        return self.current.wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        return self.current.wrap_socket(*args, **kwargs)


class LiveWebConfig:
    """`--web.config.file` read at start and again at each reload (SIGHUP, `POST /-/reload`):
    basic auth users, response headers and TLS files apply from the next request or handshake,
    as exporter-toolkit reads the file afresh. A file with a problem changes nothing. Turning
    TLS on or off needs a restart: the listener is made once."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        first = load_web_config(path)
        # Shared with the middleware (and the answers given without it), changed in place.
        self.users = Users(first.users)
        self.headers = _encoded(first.headers)
        self.tls = ReloadableContext(first.context) if first.context is not None else None

    @property
    def ssl(self) -> dict[str, Any]:
        """uvicorn's TLS settings: the listener's context, or nothing without TLS."""
        tls = self.tls
        return {} if tls is None else {"ssl_context_factory": lambda config, default: tls}

    def middleware(self) -> list[Middleware]:
        if not self.path:
            return []
        # Both layers always, even empty: a reload may add headers or users.
        return [
            Middleware(ResponseHeadersMiddleware, headers=self.headers),
            Middleware(BasicAuthMiddleware, users=self.users),
        ]

    def read(self) -> Callable[[], None]:
        """Read the file afresh and return what applies it; WebConfigError names a problem."""
        new = load_web_config(self.path)
        if (new.context is None) != (self.tls is None):
            raise WebConfigError("tls_server_config: turning TLS on or off needs a restart")
        users = Users(new.users, self.users)  # the dummy hash is made here, not while applying

        def apply() -> None:
            self.users.replace(users)
            self.headers[:] = _encoded(new.headers)
            if self.tls is not None and new.context is not None:
                self.tls.current = new.context

        return apply


def _encoded(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), v.encode()) for k, v in headers.items()]


class Users:
    """basic_auth_users: user -> bcrypt hash, and the dummy hash an unknown user is checked
    against (of the highest configured cost). `generation` counts replacements: credentials
    verified before one are verified again."""

    def __init__(self, hashes: dict[str, bytes], before: Users | None = None) -> None:
        self.hashes = dict(hashes)
        self.dummy = b""
        self.generation = 0
        if hashes:
            cost = max(int(h.split(b"$")[2]) for h in hashes.values())
            if before is not None and before.dummy and int(before.dummy.split(b"$")[2]) == cost:
                self.dummy = before.dummy  # a reload at the same cost: no bcrypt on the event loop
            else:
                import bcrypt

                self.dummy = bcrypt.hashpw(b"not a password", bcrypt.gensalt(rounds=cost))

    def replace(self, other: Users) -> None:
        self.hashes, self.dummy = other.hashes, other.dummy
        self.generation += 1


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


class ResponseHeadersMiddleware:
    """Adds http_server_config.headers to every response."""

    def __init__(self, app: ASGIApp, headers: dict[str, str] | list[tuple[bytes, bytes]]) -> None:
        self.app = app
        # A list is shared with LiveWebConfig, which changes it in place at a reload.
        self.headers = headers if isinstance(headers, list) else _encoded(headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.headers:
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        await self.app(scope, receive, with_headers)


class BasicAuthMiddleware:
    """HTTP basic auth against bcrypt hashes.

    bcrypt is slow on purpose (tens of milliseconds): it runs in one worker thread, so a flood
    of wrong passwords queues there and never holds the event loop (scrapes with cached
    credentials go on). A successful check is remembered, as a digest of the header, so a
    scraper pays bcrypt once. An unknown user is checked against a dummy hash of the highest
    configured cost, so it takes as long as a known one.
    """

    def __init__(self, app: ASGIApp, users: dict[str, bytes] | Users) -> None:
        self.app = app
        # Users is shared with LiveWebConfig, which replaces its hashes at a reload.
        self.users = users if isinstance(users, Users) else Users(users)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._generation = self.users.generation
        # One thread: bcrypt holds a core while it runs; the other is left to the event loop.
        self._bcrypt = anyio.CapacityLimiter(1)

    @property
    def open(self) -> bool:
        """No user is configured (a web config without basic_auth_users): nobody is asked."""
        return not self.users.hashes

    def verified(self, header: bytes) -> bool:
        """Whether these credentials were checked already (no bcrypt: a cache look-up)."""
        if self.open:
            return True
        if self._generation != self.users.generation:
            # The users changed (a reload): a removed user, or a changed password, is not let
            # in by a check made before.
            self._ok.clear()
            self._generation = self.users.generation
        digest = hashlib.sha256(header).digest()
        if digest in self._ok:
            self._ok.move_to_end(digest)
            return True
        return False

    async def check(self, header: bytes) -> bool:
        if self.verified(header):
            return True
        scheme, _, encoded = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        if not sep:
            return False
        users = self.users
        generation, hashed = users.generation, users.hashes.get(user)
        ok = await anyio.to_thread.run_sync(
            _checkpw, password.encode(), hashed or users.dummy, limiter=self._bcrypt
        )
        if not ok or hashed is None:
            return False
        if users.generation != generation:
            return await self.check(header)  # a reload meanwhile: checked against the users read last
        self._ok[hashlib.sha256(header).digest()] = None
        if len(self._ok) > CACHE_SIZE:
            self._ok.popitem(last=False)
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in _UNAUTHENTICATED or self.open:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        if await self.check(header):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"www-authenticate", b'Basic realm="asyncjob-exporter"'),
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"13"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"Unauthorized\n"})


def _checkpw(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:  # the hash was checked at start; a password bcrypt refuses is wrong
        return False
