"""httpx.Auth flows for every auth type: static bearer/basic, Basiq's token, OAuth2 token grants.

Token flows fetch a token through the same client, read every answer they look into through
the reader they are given (the target's size cap and byte budget), cache the token under a
lock until shortly before it expires (one token per target, never one per job: Basiq allows 1,500 token
calls per 5 minutes), and renew it once when the API answers 401 (or Basiq's 403
"Token has expired"). A token endpoint that refuses for load (429, Basiq's 403, a 403 that
speaks of a rate limit) is a rate limit to back off from, not bad credentials.
"""

from __future__ import annotations

import base64
import math
import re
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator

import anyio
import httpx

from exporter.config import AuthConfig
from exporter.parsing import load_json

# Reads an answer's body, bounded (exporter.fetch.TargetHttp.read_body).
BodyReader = Callable[[httpx.Response], Awaitable[bytes]]

# Renew this long before the provider's expiry, so a token never dies mid-poll.
EXPIRY_MARGIN = 60.0
DEFAULT_TOKEN_LIFETIME = 3600.0


# How answers say "too many requests" when their status does not (Basiq's 403s).
RATE_LIMIT_TEXT = re.compile(
    rb"rate[ _-]?limit|too[ _-]many[ _-]requests|throttl|quota|overload",
    re.IGNORECASE,
)
# Basiq's 403 from `POST /token` for an account it disabled (its "HTTP errors per endpoint").
ACCOUNT_DISABLED = re.compile(rb"account[^.]{0,40}disabled", re.IGNORECASE)


def rate_limited(body: bytes) -> bool:
    """True when a refusal's body speaks of a rate limit."""
    return RATE_LIMIT_TEXT.search(body) is not None


class AuthError(Exception):
    """The token endpoint refused or answered nonsense. The message never holds a secret.

    `reason` is the poll error it counts as: `auth`, or `http_429`/`http_5xx` when the token
    endpoint was overloaded or down (then the poll backs off, as long as its Retry-After says).
    """

    def __init__(self, message: str, reason: str = "auth", retry_after: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after  # the Retry-After header as sent


class BearerAuth(httpx.Auth):
    """A static token, re-read from its file at each request so rotation needs no restart."""

    def __init__(self, config: AuthConfig) -> None:
        self._config = config

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        secret = self._config.secret("token")
        request.headers["Authorization"] = f"Bearer {secret.get_secret_value() if secret else ''}"
        yield request


class BasicAuth(httpx.Auth):
    def __init__(self, config: AuthConfig) -> None:
        self._config = config

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        secret = self._config.secret("password")
        raw = f"{self._config.username}:{secret.get_secret_value() if secret else ''}".encode()
        request.headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
        yield request


class TokenAuth(httpx.Auth):
    """Base of the token-exchanging flows; subclasses say how to ask for a token."""

    def __init__(self, config: AuthConfig, base_url: str, read: BodyReader) -> None:
        self._config = config
        self._base_url = base_url
        self._read = read
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = anyio.Lock()

    def token_request(self) -> httpx.Request:
        raise NotImplementedError

    def _expired(self, response: httpx.Response, body: bytes) -> bool:
        return response.status_code == 401

    def _valid(self) -> bool:
        return self._token is not None and time.monotonic() < self._expires_at

    def _overloaded(self, response: httpx.Response, body: bytes) -> bool:
        """A token refusal that means "too many requests", not "bad credentials"."""
        return response.status_code == 429 or (response.status_code == 403 and rate_limited(body))

    def _store(self, response: httpx.Response, body: bytes) -> None:
        status = response.status_code
        if status != 200:
            reason = (
                "http_429" if self._overloaded(response, body) else "http_5xx" if status >= 500 else "auth"
            )
            retry_after = response.headers.get("Retry-After") if reason != "auth" else None
            why = " (rate limited)" if reason == "http_429" else ""
            if reason == "auth" and ACCOUNT_DISABLED.search(body):
                why = " (the account is disabled)"
            raise AuthError(f"token endpoint answered HTTP {status}{why}", reason, retry_after)
        try:
            answer = load_json(body)
            token = answer["access_token"]
        except (ValueError, KeyError, TypeError, IndexError):
            raise AuthError("token endpoint answered without an access_token") from None
        if not isinstance(token, str) or not token:
            raise AuthError("token endpoint answered an empty access_token")
        lifetime = _lifetime(answer.get("expires_in"))
        self._token = token
        self._expires_at = time.monotonic() + max(lifetime - EXPIRY_MARGIN, lifetime / 2)

    def invalidate(self) -> None:
        self._token = None

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        for attempt in range(2):
            token = self._token if self._valid() else None
            if token is None:  # only the renewal is serialised; a valid token needs no lock
                async with self._lock:
                    if not self._valid():
                        token_response = yield self.token_request()
                        self._store(token_response, await self._read(token_response))
                    token = self._token
            request.headers["Authorization"] = f"Bearer {token}"
            response = yield request
            if attempt == 0 and response.status_code in (401, 403):
                if not self._expired(response, await self._read(response)):
                    return
                async with self._lock:
                    if self._token == token:
                        self.invalidate()
                continue
            return

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        raise RuntimeError("token auth works with httpx.AsyncClient only")


class BasiqAuth(TokenAuth):
    """Basiq: `POST /token` with the API key as issued, `basiq-version: 3.0`, scope SERVER_ACCESS."""

    def token_request(self) -> httpx.Request:
        key = self._config.secret("api_key")
        return httpx.Request(
            "POST",
            f"{self._base_url}/token",
            headers={
                "Authorization": f"Basic {key.get_secret_value() if key else ''}",
                "basiq-version": "3.0",
                "Accept": "application/json",
            },
            data={"scope": self._config.scope or "SERVER_ACCESS"},
        )

    def _expired(self, response: httpx.Response, body: bytes) -> bool:
        if response.status_code == 401:
            return True
        # Basiq answers an expired token with 403 "Token has expired"; other 403s are real.
        return response.status_code == 403 and b"expired" in body.lower()

    def _overloaded(self, response: httpx.Response, body: bytes) -> bool:
        # Basiq's token endpoint answers 403 past its 1,500 calls per 5 minutes ("Invalid
        # request", its error guide says), and 403 "Your account has been disabled" to an
        # account only Basiq's support can enable again: that one is bad credentials, not load.
        if response.status_code == 403:
            return ACCOUNT_DISABLED.search(body) is None or rate_limited(body)
        return response.status_code == 429


class OAuth2Auth(TokenAuth):
    """OAuth2 client-credentials or password grant, with a form or JSON body (Oxlin, WillSuite: JSON)."""

    def __init__(self, config: AuthConfig, base_url: str, read: BodyReader) -> None:
        super().__init__(config, base_url, read)
        self._grant = "password" if config.type == "oauth2_password" else "client_credentials"

    def token_request(self) -> httpx.Request:
        c = self._config
        body: dict[str, str] = dict(c.token_params)
        body["grant_type"] = self._grant
        if c.client_id:
            body["client_id"] = c.client_id
        secret = c.secret("client_secret")
        if secret is not None:
            body["client_secret"] = secret.get_secret_value()
        if c.scope:
            body["scope"] = c.scope
        if self._grant == "password":
            body["username"] = c.username or ""
            password = c.secret("password")
            body["password"] = password.get_secret_value() if password else ""
        url = c.token_url or f"{self._base_url}/oauth/token"
        if c.token_body == "json":
            return httpx.Request("POST", url, json=body, headers={"Accept": "application/json"})
        return httpx.Request("POST", url, data=body, headers={"Accept": "application/json"})


def _lifetime(expires_in: object) -> float:
    """A token's lifetime in seconds from `expires_in`: a number of seconds, finite and above
    zero, or the default (a NaN or negative lifetime would ask for a token at every request)."""
    try:
        lifetime = float(expires_in or DEFAULT_TOKEN_LIFETIME)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_TOKEN_LIFETIME
    return lifetime if math.isfinite(lifetime) and lifetime > 0 else DEFAULT_TOKEN_LIFETIME


def build_auth(config: AuthConfig, base_url: str, read: BodyReader) -> httpx.Auth | None:
    match config.type:
        case "none":
            return None
        case "bearer":
            return BearerAuth(config)
        case "basic":
            return BasicAuth(config)
        case "basiq":
            return BasiqAuth(config, base_url, read)
        case "oauth2_client_credentials" | "oauth2_password":
            return OAuth2Auth(config, base_url, read)
    raise ValueError(f"unknown auth type {config.type}")
