"""Weight sync trainer -> rollout engines: three transports, one pure chooser, one version check.

- ``distributed`` (trainer and engines on different GPUs/pods): trainer rank 0 forms a process group with
  every engine through ``/init_weights_update_group`` and, per bucket, POSTs
  ``/update_weights_from_distributed`` while broadcasting the tensors (NCCL on GPUs, gloo on CPU);
- ``ipc`` (``placement.colocate``: the engines share the trainer's GPUs): ``/update_weights_from_tensor``
  with CUDA IPC handles in SGLang's serialized form (the embedded engine takes tensor bytes on CPU), around
  ``/release_memory_occupation`` / ``/resume_memory_occupation`` driven by the driver;
- ``disk`` (on request only): safetensors written under the job's shared storage
  (``spec.cluster.storage``), which every pod mounts, then ``/update_weights_from_disk``.
Every sync ends with the driver reading each engine's ``weight_version`` (``/model_info``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from kuberl.errors import EngineError, SpecError
from kuberl.worker.net import free_port
from kuberl.worker.rollout.engine_client import EngineClient, EngineHTTPError
from kuberl.worker.tensor_payload import encode_named_tensors

DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024  # slime's --update-weight-buffer-size
GROUP_JOIN_TIMEOUT_S = 300.0

Transport = Literal["distributed", "ipc", "disk"]
TRANSPORTS: tuple[Transport, ...] = ("distributed", "ipc", "disk")
NamedTensors = list[tuple[str, torch.Tensor]]


class WeightSyncError(EngineError):
    """Weights did not reach an engine, or an engine serves another version than the one just sent."""


@dataclass(frozen=True)
class SyncStats:
    version: str
    seconds: float
    bytes: int  # bytes sent, summed over engines
    calls: int  # weight-update HTTP calls made
    transport: str = "distributed"


@dataclass(frozen=True)
class SyncSettings:
    """Everything the trainer's rank 0 needs to push one version; built by :func:`sync_settings`."""

    transport: Transport
    engine_kind: str = "embedded"  # "sglang": CUDA-IPC payloads; "embedded": tensor bytes
    gpus_per_engine: int = 1  # engine k's ranks in the group are 1 + k * gpus_per_engine + tp_rank
    backend: str = "gloo"  # process-group backend of the distributed transport
    device: str = "cpu"  # where rank 0 broadcasts from ("cuda" with NCCL)
    master_address: str | None = None  # None: the trainer's node IP
    disk_dir: str | None = None  # shared-storage folder of the disk transport
    model_path: str | None = None  # config/tokenizer files copied next to disk checkpoints
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    epoch: int = 0  # the driver bumps it when an engine is replaced: the group is formed anew


# ---- pure choices ---------------------------------------------------------------------------------
def choose_transport(config: Any, requested: str | None = None) -> Transport:
    """Colocated -> ``ipc``; otherwise ``distributed``. ``disk`` only when asked for explicitly."""
    colocate = bool(config.colocate)
    if requested is None or requested == "":
        return "ipc" if colocate else "distributed"
    if requested not in TRANSPORTS:
        raise SpecError([f"weight-sync transport {requested!r} is unknown; use one of {list(TRANSPORTS)}"])
    if requested == "ipc" and not colocate:
        raise SpecError(["the ipc weight-sync transport needs spec.placement.colocate: true (engines "
                         "on the trainer's GPUs); use distributed for separate rollout GPUs"])
    if requested == "distributed" and colocate:
        raise SpecError(["the distributed weight-sync transport cannot run colocated (NCCL refuses two "
                         "ranks on one GPU); leave the transport unset to get ipc"])
    return requested  # type: ignore[return-value]


def disk_sync_dir(config: Any, *, in_cluster: bool, run_dir: Path) -> Path:
    """Where the disk transport writes: under ``spec.cluster.storage``'s mount, which every pod sees.

    Locally the engines are processes of this machine, so the run directory serves. A cluster job
    without shared storage is refused: a path only the trainer pod sees would load nothing.
    """
    if not in_cluster:
        return run_dir / "weight-sync"
    storage = getattr(config, "storage_path", None)
    if not storage:
        raise SpecError([
            "spec.cluster.storage: the disk weight-sync transport writes checkpoints the engines must "
            "read, so it needs a volume mounted in every pod; set spec.cluster.storage.claimName (and "
            "mountPath) or use the default distributed transport"
        ])
    return Path(storage) / ".kuberl-weight-sync" / str(config.job_name)


def sync_settings(config: Any, transport: Transport, *, use_gpus: bool, disk_dir: Path | None = None,
                  epoch: int = 0) -> SyncSettings:
    """The settings of one sync, from the resolved config and whether the job runs on GPUs."""
    if transport == "disk" and disk_dir is None:
        raise ValueError("the disk transport needs disk_dir (see disk_sync_dir)")
    return SyncSettings(
        transport=transport,
        engine_kind=str(config.rollout_engine),
        gpus_per_engine=int(config.gpus_per_engine) if config.rollout_engine == "sglang" else 1,
        backend="nccl" if use_gpus else "gloo",
        device="cuda" if use_gpus else "cpu",
        disk_dir=None if disk_dir is None else str(disk_dir),
        model_path=config.hf_checkpoint,
        epoch=epoch,
    )


def bucket_tensors(
    named: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[NamedTensors]:
    """Group tensors into buckets of at most ``bucket_bytes`` (a bigger tensor gets its own bucket).

    Lazy: a collective ``named_weights()`` iterator is consumed one bucket at a time.
    """
    bucket: NamedTensors = []
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


def _nbytes(named: NamedTensors) -> int:
    return sum(t.numel() * t.element_size() for _, t in named)


def _last(buckets: Iterator[NamedTensors]) -> Iterator[tuple[NamedTensors, bool]]:
    """Pairs (bucket, is_last) without materialising the iterator."""
    prev = next(buckets, None)
    while prev is not None:
        nxt = next(buckets, None)
        yield prev, nxt is None
        prev = nxt


# ---- SGLang's CUDA-IPC payload ----------------------------------------------------------------------
_DEVICE_ARG = 6  # position of the device index in torch's CUDA-tensor rebuild arguments


def serialize_cuda_ipc(named: NamedTensors) -> str:
    """base64 of a ForkingPickler dump of [(name, cuda tensor)] whose devices are GPU UUIDs.

    This is the form SGLang's ``MultiprocessingSerializer`` reads: the rebuild function is torch's own,
    which SGLang patches to map a UUID back to its local device index, so processes with different
    ``CUDA_VISIBLE_DEVICES`` agree on the GPU. The tensors must stay alive until the engine answers.
    """
    import copyreg
    from multiprocessing.reduction import ForkingPickler

    from torch.multiprocessing import reductions

    original = getattr(reductions, "_reduce_tensor_original", reductions.reduce_tensor)

    def reduce_with_uuid(tensor: torch.Tensor):
        fn, args = original(tensor)
        if tensor.is_cuda:
            device = args[_DEVICE_ARG]
            if not isinstance(device, int):
                raise WeightSyncError(f"torch's CUDA reduction changed shape: argument {_DEVICE_ARG} is "
                                      f"{device!r}, not a device index")
            uuid_str = str(torch.cuda.get_device_properties(device).uuid)
            args = (*args[:_DEVICE_ARG], uuid_str, *args[_DEVICE_ARG + 1:])
        return fn, args

    buf = io.BytesIO()
    pickler = ForkingPickler(buf)
    table = {**copyreg.dispatch_table, **ForkingPickler._extra_reducers}
    for cls in (torch.Tensor, torch.nn.Parameter, *torch._tensor_classes):
        table[cls] = reduce_with_uuid
    pickler.dispatch_table = table
    pickler.dump([(n, t) for n, t in named])
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ---- engine calls the shared client does not have -------------------------------------------------
class WeightClient(EngineClient):
    """EngineClient plus the weight and memory calls of sglang-api.md §4-5 that only sync needs."""

    async def update_weights_from_serialized(
        self, payloads: list[str], weight_version: str | None = None, load_format: str | None = None,
    ) -> dict[str, Any]:
        """``/update_weights_from_tensor`` with ready payloads (one per TP rank)."""
        body = {"serialized_named_tensors": payloads, "load_format": load_format, "flush_cache": True,
                "weight_version": weight_version, "abort_all_requests": False}
        return await self._post_ok("/update_weights_from_tensor", body, idempotent=False)

    async def release_memory_occupation(self, tags: list[str] | None = None) -> None:
        await self._request("POST", "/release_memory_occupation", {"tags": tags}, idempotent=True)

    async def resume_memory_occupation(self, tags: list[str] | None = None) -> None:
        await self._request("POST", "/resume_memory_occupation", {"tags": tags}, idempotent=True)

    async def weight_version(self) -> str | None:
        version = (await self.model_info()).get("weight_version")
        return None if version is None else str(version)


async def check_versions(urls: list[str], version: str) -> None:
    """Read every engine's weight version; raise naming each engine that serves another one."""

    async def one(url: str) -> str | None:
        async with WeightClient(url, timeout=30) as client:
            return await client.weight_version()

    got = await asyncio.gather(*(one(u) for u in urls), return_exceptions=True)
    bad = {u: (v if not isinstance(v, BaseException) else f"unreachable: {v}")
           for u, v in zip(urls, got, strict=True) if v != version}
    if bad:
        raise WeightSyncError(
            f"after pushing weight version {version!r}, engines report {bad}: the update did not land "
            "(see the engine logs); the job stops rather than train on rollouts of stale weights"
        )


async def set_memory(urls: list[str], action: Literal["release", "resume"],
                     tags: list[str] | None = None) -> None:
    """Release or resume engine memory (colocation); engines must be idle."""

    async def one(url: str) -> None:
        async with WeightClient(url, timeout=600) as client:
            if action == "release":
                await client.release_memory_occupation(tags)
            else:
                await client.resume_memory_occupation(tags)

    await asyncio.gather(*(one(u) for u in urls))


# ---- the trainer side ------------------------------------------------------------------------------
class WeightSender:
    """Lives in trainer rank 0; keeps the distributed group between syncs until the engines change."""

    def __init__(self) -> None:
        self._group: Any = None
        self._group_name = ""
        self._group_key: tuple[Any, ...] | None = None
        self._group_urls: list[str] = []

    def sync(self, named: Iterable[tuple[str, torch.Tensor]], urls: list[str], version: str,
             settings: SyncSettings) -> SyncStats:
        """Push ``named`` (consumed lazily, bucket by bucket) to every engine as ``version``."""
        if not urls:
            raise WeightSyncError("no engine URLs to sync weights to")
        t0 = time.perf_counter()
        if settings.transport == "distributed":
            nbytes, calls = asyncio.run(self._distributed(named, urls, version, settings))
        elif settings.transport == "ipc":
            nbytes, calls = asyncio.run(_push_ipc(named, urls, version, settings))
        elif settings.transport == "disk":
            nbytes, calls = asyncio.run(_push_disk(named, urls, version, settings))
        else:
            raise WeightSyncError(f"unknown transport {settings.transport!r}")
        return SyncStats(version, time.perf_counter() - t0, nbytes, calls, settings.transport)

    async def _distributed(self, named: Iterable[tuple[str, torch.Tensor]], urls: list[str],
                           version: str, settings: SyncSettings) -> tuple[int, int]:
        from kuberl.worker.weight_group import dtype_name, send_bucket

        clients = [WeightClient(u, retries=0) for u in urls]
        try:
            await self._ensure_group(clients, settings)
            nbytes = calls = 0
            for bucket, last in _last(bucket_tensors(named, settings.bucket_bytes)):
                names = [n for n, _ in bucket]
                dtypes = [dtype_name(t.dtype) for _, t in bucket]
                shapes = [list(t.shape) for _, t in bucket]
                posts = [c.update_weights_from_distributed(
                    names, dtypes, shapes, weight_version=version if last else None,
                    group_name=self._group_name) for c in clients]
                await _together(posts, asyncio.to_thread(send_bucket, self._group, bucket,
                                                         settings.device))
                nbytes += _nbytes(bucket) * len(urls)
                calls += len(urls)
            return nbytes, calls
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))

    async def _ensure_group(self, clients: list[WeightClient], settings: SyncSettings) -> None:
        """Form the group with these engines unless it already exists (same URLs, same epoch)."""
        from kuberl.worker.engine.host import node_ip
        from kuberl.worker.weight_group import join_group

        urls = [c.url for c in clients]
        key = (tuple(urls), settings.epoch, settings.backend, settings.gpus_per_engine)
        if key == self._group_key:
            return
        await self.close_group()
        address = settings.master_address or node_ip()
        port = free_port()
        name = f"kuberl-weights-{uuid.uuid4().hex[:8]}"
        tp = settings.gpus_per_engine
        world = 1 + len(clients) * tp
        inits = [c.init_weights_update_group(address, port, 1 + k * tp, world, name, settings.backend)
                 for k, c in enumerate(clients)]
        results = await _together(inits, asyncio.to_thread(
            join_group, address, port, 0, world, name, settings.backend, GROUP_JOIN_TIMEOUT_S))
        self._group, self._group_name, self._group_key = results[-1], name, key
        self._group_urls = urls

    async def close_group(self) -> None:
        """Destroy the current group on the engines still reachable and here (best effort)."""
        if self._group is None:
            return
        from kuberl.worker.weight_group import destroy_group

        async def one(url: str) -> None:
            try:
                async with WeightClient(url, retries=0, timeout=10) as c:
                    await c.destroy_weights_update_group(self._group_name)
            except EngineError:
                pass  # a dead or replaced engine has no group to destroy

        await asyncio.gather(*(one(u) for u in self._group_urls))
        group, self._group, self._group_key = self._group, None, None
        # A group with a dead peer may not tear down cleanly; it is dropped either way.
        with contextlib.suppress(RuntimeError, ValueError):
            destroy_group(group)

    def close(self) -> None:
        asyncio.run(self.close_group())


async def _together(calls: list[Any], local: Any) -> list[Any]:
    """Await engine calls and a local blocking step together; the first engine error fails fast.

    The local step (joining a group, broadcasting) blocks until every engine takes part, so an engine
    that answered 400 would otherwise leave it waiting until its timeout.
    """
    tasks = [asyncio.ensure_future(c) for c in calls] + [asyncio.ensure_future(local)]
    pending = set(tasks)
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                for other in pending:
                    other.cancel()
                exc = task.exception()
                if isinstance(exc, EngineHTTPError):
                    raise WeightSyncError(f"weight update failed: {exc}") from exc
                raise exc  # type: ignore[misc]
    return [t.result() for t in tasks]


async def _push_ipc(named: Iterable[tuple[str, torch.Tensor]], urls: list[str], version: str,
                    settings: SyncSettings) -> tuple[int, int]:
    """Bucketed ``/update_weights_from_tensor`` to every engine; the last bucket sets the version."""
    clients = [WeightClient(u, retries=0) for u in urls]
    try:
        nbytes = calls = 0
        for bucket, last in _last(bucket_tensors(named, settings.bucket_bytes)):
            if settings.engine_kind == "sglang":
                cuda = [(n, t.detach().to("cuda").contiguous()) for n, t in bucket]
                payloads = [serialize_cuda_ipc(cuda)] * settings.gpus_per_engine  # one per TP rank
            else:
                cuda = []
                payloads = [encode_named_tensors(bucket)]
            await asyncio.gather(*(c.update_weights_from_serialized(
                payloads, weight_version=version if last else None) for c in clients))
            del cuda  # the engines have copied the tensors out of the shared memory
            nbytes += _nbytes(bucket) * len(urls)
            calls += len(urls)
        return nbytes, calls
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


CONFIG_FILES = ("*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken")


def write_hf_shards(named: Iterable[tuple[str, torch.Tensor]], directory: Path, bucket_bytes: int,
                    model_path: str | None = None) -> int:
    """Write ``named`` as safetensors shards (plus the model's config and tokenizer files)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    total = 0
    for i, bucket in enumerate(bucket_tensors(named, bucket_bytes)):
        save_file({n: t.detach().cpu().contiguous().clone() for n, t in bucket},
                  str(directory / f"model-{i:05d}.safetensors"), metadata={"format": "pt"})
        total += _nbytes(bucket)
    source = Path(model_path) if model_path else None
    if source is not None and source.is_dir():
        for pattern in CONFIG_FILES:
            for f in source.glob(pattern):
                if not f.name.endswith(".index.json"):
                    shutil.copy2(f, directory / f.name)
    return total


async def _push_disk(named: Iterable[tuple[str, torch.Tensor]], urls: list[str], version: str,
                     settings: SyncSettings) -> tuple[int, int]:
    """Write version ``version`` under the shared folder, have every engine load it, drop older ones."""
    if not settings.disk_dir:
        raise WeightSyncError("the disk transport has no shared folder (see disk_sync_dir)")
    root = Path(settings.disk_dir)
    target = root / f"v{version}"
    partial = root / f".v{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    nbytes = await asyncio.to_thread(write_hf_shards, named, partial, settings.bucket_bytes,
                                     settings.model_path)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)

    async def one(url: str) -> None:
        async with WeightClient(url, retries=0) as client:
            await client.update_weights_from_disk(str(target), weight_version=version)

    try:
        await asyncio.gather(*(one(u) for u in urls))
    except EngineHTTPError as e:
        raise WeightSyncError(f"an engine could not load {target}: {e}; every pod must mount "
                              "spec.cluster.storage at the same path") from e
    for old in root.glob("v*"):
        if old != target and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return nbytes * len(urls), len(urls)


__all__ = [
    "DEFAULT_BUCKET_BYTES", "SyncSettings", "SyncStats", "Transport", "WeightClient", "WeightSender",
    "WeightSyncError", "bucket_tensors", "check_versions", "choose_transport", "disk_sync_dir",
    "serialize_cuda_ipc", "set_memory", "sync_settings", "write_hf_shards",
]
