"""gzip for the exposition: each cached piece of the body is compressed once, when it changes."""

from __future__ import annotations

import zlib

GZIP_LEVEL = 1


def gzip_member(data: bytes) -> bytes:
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    return c.compress(data) + c.flush()
