"""HTTP basic auth against the bcrypt hashes of `--web.config.file`'s basic_auth_users, for
every endpoint but /healthz: the users (replaced in place at a reload) and the ASGI middleware
that checks each request's credentials (also called by the server's direct answers).

bcrypt runs in a worker thread, successful checks are cached, and an unknown user costs a bcrypt
as a known one does (user names cannot be told apart by timing)."""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict

import anyio
from starlette.types import ASGIApp, Receive, Scope, Send

_UNAUTHENTICATED = ("/healthz",)
# Verified credentials kept (as SHA-256 digests of the header, never the password itself).
CACHE_SIZE = 256


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
