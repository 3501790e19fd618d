"""Which shard owns a job: a stable hash of (target, job id), as kube-state-metrics shards objects."""

from __future__ import annotations

import hashlib


def shard_of(target: str, job_id: str, total_shards: int) -> int:
    if total_shards <= 1:
        return 0
    digest = hashlib.blake2b(f"{target}\x00{job_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % total_shards
