"""Weight sync trainer -> rollout engines, with the weight version every engine then reports.

Two transports, chosen by the engines we talk to:
- ``tensor``: bucketed ``/update_weights_from_tensor`` (the embedded engine takes real bytes; on GPUs the
  Megatron backend's NCCL/IPC path plugs in here);
- ``disk``: the trainer writes a Hugging Face checkpoint to shared storage and each engine loads it with
  ``/update_weights_from_disk`` (works with real SGLang anywhere a volume is shared).
Engines are paused around the update so no request mixes two versions inside one forward pass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from kuberl.worker.rollout.engine_client import EngineClient

DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024  # slime's --update-weight-buffer-size


@dataclass(frozen=True)
class SyncStats:
    version: str
    seconds: float
    bytes: int
    calls: int


def bucket_tensors(
    named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors into buckets of at most ``bucket_bytes`` (a bigger tensor gets its own bucket)."""
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, tensor in named:
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, tensor))
        size += nbytes
    if bucket:
        yield bucket


async def push_tensors(
    urls: list[str], named: list[tuple[str, torch.Tensor]], version: str,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> SyncStats:
    """Send ``named`` to every engine in buckets; the last bucket sets the new version."""
    t0 = time.perf_counter()
    buckets = list(bucket_tensors(named, bucket_bytes))
    total = sum(t.numel() * t.element_size() for _, t in named)

    async def one(url: str) -> int:
        async with EngineClient(url) as client:
            for i, bucket in enumerate(buckets):
                last = i == len(buckets) - 1
                await client.update_weights_from_tensor(bucket, weight_version=version if last else None)
        return len(buckets)

    calls = sum(await asyncio.gather(*(one(u) for u in urls)))
    return SyncStats(version, time.perf_counter() - t0, total * len(urls), calls)


async def push_disk(urls: list[str], path: Path, version: str) -> SyncStats:
    """Ask every engine to load the Hugging Face checkpoint at ``path`` and report ``version``."""
    t0 = time.perf_counter()

    async def one(url: str) -> None:
        async with EngineClient(url) as client:
            await client.update_weights_from_disk(str(path), weight_version=version)

    await asyncio.gather(*(one(u) for u in urls))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return SyncStats(version, time.perf_counter() - t0, size * len(urls), len(urls))
