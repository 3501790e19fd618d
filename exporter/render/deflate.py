"""gzip for the exposition, built as pigz builds one stream from pieces compressed apart: each
cached piece is raw deflate ended by a full flush (byte-aligned, no reference to earlier bytes),
so any sequence of pieces is a valid deflate stream. A scrape adds the last piece, the gzip header
and the trailer, whose CRC-32 is combined from the pieces' own: one gzip member, which every
client reads (RFC 1952), and no byte of the cached pieces compressed or read again.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import NamedTuple

GZIP_LEVEL = 1

# RFC 1952 §2.3: magic, deflate, no flags, no mtime, no extra flags, OS unknown.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

_ALL = 0xFFFFFFFF
_ONE = 0x80000000  # the polynomial 1 in zlib's bit-reflected CRC-32 (x^0 is the top bit)
_POLY = 0xEDB88320
_ZEROS = bytes(1 << 16)


class Block(NamedTuple):
    """Raw deflate of `size` plain bytes whose CRC-32 is `crc`; `key` is the CRC-32 of those
    bytes computed from an all-ones start, which lets `concat` combine CRCs at zlib's speed."""

    data: bytes
    crc: int
    size: int
    key: int


EMPTY = Block(b"", 0, 0, 0)


def block(plain: bytes) -> Block:
    """Compress one piece on its own; empty text is the empty block."""
    if not plain:
        return EMPTY
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    data = c.compress(plain) + c.flush(zlib.Z_FULL_FLUSH)
    return Block(data, zlib.crc32(plain), len(plain), zlib.crc32(plain, _ALL) ^ _ALL)


def concat(blocks: Iterable[Block]) -> tuple[tuple[bytes, ...], int, int]:
    """(the blocks' deflate data, CRC-32, size) of the blocks one after the other; the data is
    not copied (a scrape joins it once, into its body).

    crc(A+B) = crc32(zeros(|B|), crc(A)) ^ key(B): zlib runs over |B| zero bytes (read from a
    small buffer), so the cost follows the plain size, in C, with the GIL released for large
    blocks; nothing is decompressed.
    """
    crc = size = 0
    parts = []
    for b in blocks:
        if b.size:
            n = b.size
            while n > len(_ZEROS):
                crc = zlib.crc32(_ZEROS, crc)
                n -= len(_ZEROS)
            crc = zlib.crc32(memoryview(_ZEROS)[:n], crc) ^ b.key
            size += b.size
            parts.append(b.data)
    return tuple(parts), crc, size


def multiply(a: int, b: int) -> int:
    """a·b modulo the CRC-32 polynomial, both bit-reflected (as zlib's multmodp)."""
    product, mask = 0, _ONE
    while a:
        if a & mask:
            product ^= b
            a ^= mask
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
        mask >>= 1
    return product


# x^(8·2^k) mod the polynomial: appending 2^k zero bytes multiplies a CRC's register by it.
_POWERS = [zlib.crc32(b"\0", _ONE) ^ zlib.crc32(b"\0", 0)]
for _ in range(63):
    _POWERS.append(multiply(_POWERS[-1], _POWERS[-1]))


def combine(crc_a: int, crc_b: int, size_b: int) -> int:
    """CRC-32 of A+B from crc(A), crc(B) and |B| (as zlib's crc32_combine), for any size."""
    k = 0
    while size_b:
        if size_b & 1:
            crc_a = multiply(_POWERS[k], crc_a)
        size_b >>= 1
        k += 1
    return crc_a ^ crc_b


def gzip_member(parts: Sequence[bytes], crc: int, size: int, tail: bytes) -> bytes:
    """One gzip member: cached deflate `parts` (`size` plain bytes of CRC-32 `crc`), then `tail`
    compressed now as the final block."""
    c = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -15)
    last = c.compress(tail) + c.flush()
    trailer = struct.pack("<II", zlib.crc32(tail, crc), (size + len(tail)) & _ALL)
    return b"".join((GZIP_HEADER, *parts, last, trailer))


def inflate(parts: Sequence[bytes]) -> bytes:
    """The cached parts decompressed (for a client that does not accept gzip)."""
    return zlib.decompressobj(-15).decompress(b"".join(parts))
