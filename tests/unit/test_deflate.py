"""Raw deflate blocks joined into one gzip member: any sequence of blocks reads back as the
concatenation of their text, with the CRC-32 and size a gzip reader checks."""

from __future__ import annotations

import gzip
import random
import zlib

import pytest

from exporter.render.deflate import EMPTY, block, combine, concat, gzip_member, inflate


def texts(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sizes = [0, 1, 37, 4096, 70_000, 200_000]  # empty, tiny, and larger than the zero buffer
    return [bytes(rng.choice(b'asyncjob{}="\n 0123') for _ in range(rng.choice(sizes))) for _ in range(12)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_sequence_of_blocks_is_one_member_of_their_text(seed: int) -> None:
    pieces = texts(seed)
    data, crc, size = concat(block(p) for p in pieces)
    whole = b"".join(pieces)
    assert (crc, size) == (zlib.crc32(whole), len(whole))
    body = gzip_member(data, crc, size, b"# the tail\n")
    assert gzip.decompress(body) == whole + b"# the tail\n"
    assert inflate(data) == whole


def test_combine_is_the_crc_of_the_concatenation() -> None:
    a, b = b"asyncjob_job_status{" * 999, b'job_id="x"} 1\n' * 12345
    assert combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    assert combine(zlib.crc32(a), 0, 0) == zlib.crc32(a)


def test_an_empty_body_is_still_a_valid_member() -> None:
    data, crc, size = concat([EMPTY, block(b"")])
    assert gzip.decompress(gzip_member(data, crc, size, b"")) == b""
