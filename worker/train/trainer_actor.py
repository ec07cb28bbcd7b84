"""The trainer as a Ray actor: a thin shell that owns one backend rank and pushes weights to the engines."""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kuberl.worker.train.backend import TrainerBackend
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.weight_sync import SyncSettings, SyncStats, WeightSender

log = logging.getLogger(__name__)

AVAILABLE_BACKENDS = ("torch", "megatron")
MEGATRON_INSTALL_HINT = "pip install kuberl[megatron]"


def _megatron_core_installed() -> bool:
    """Whether megatron-core can be imported here, without importing it (it pulls in CUDA extensions)."""
    try:
        return importlib.util.find_spec("megatron.core") is not None
    except ModuleNotFoundError:  # no top-level ``megatron`` package at all
        return False


def check_backend_available(kind: str) -> None:
    """Fail before any cluster resource is used when the resolved trainer backend cannot be built here."""
    from kuberl.errors import SpecError

    if kind not in AVAILABLE_BACKENDS:
        raise SpecError([
            f"spec.backends.trainer: unknown trainer backend {kind!r}; choose one of "
            f"{', '.join(AVAILABLE_BACKENDS)}"
        ])
    if kind == "megatron" and not _megatron_core_installed():
        raise SpecError([
            "spec.backends.trainer: the megatron trainer backend needs megatron-core, which is not "
            f"installed in this image ({MEGATRON_INSTALL_HINT}); or set spec.backends.trainer: torch "
            "(data-parallel over the actor GPUs)"
        ])


def build_backend(kind: str, config: Any) -> TrainerBackend:
    """Instantiate the trainer backend named by the resolved config (after torch.distributed is up).

    ``config`` is the resolved ``WorkerConfig``; a ready ``TorchBackendConfig`` is accepted too (tests pick
    a dtype with it).
    """
    check_backend_available(kind)
    if kind == "megatron":
        try:
            from kuberl.worker.train.megatron_backend import MegatronBackend, MegatronBackendConfig
        except ImportError as exc:
            from kuberl.errors import SpecError

            raise SpecError([
                f"spec.backends.trainer: the megatron trainer backend cannot be imported ({exc}); "
                f"install it with {MEGATRON_INSTALL_HINT} or set spec.backends.trainer: torch"
            ]) from exc
        if isinstance(config, MegatronBackendConfig):
            return MegatronBackend(config)
        return MegatronBackend(MegatronBackendConfig.from_worker_config(config))
    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    if isinstance(config, TorchBackendConfig):
        return TorchBackend(config)
    return TorchBackend(TorchBackendConfig.from_worker_config(config))


def uses_cuda(config: Any) -> bool:
    """Whether the trainer runs on CUDA (NCCL between ranks) or on CPU (gloo)."""
    device = getattr(config, "device", "auto")
    return device == "cuda" or (device == "auto" and torch.cuda.is_available())


def init_process_group(
    rank: int, world_size: int, master_addr: str, master_port: int, *, cuda: bool,
    timeout_s: float = 1800.0,
) -> None:
    """Join the trainer ranks' default process group: NCCL on GPU, gloo on CPU."""
    import torch.distributed as dist

    if cuda:
        # Ray shows each rank only its own GPU (device 0); under torchrun LOCAL_RANK picks it.
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    from kuberl.worker.weight_group import rendezvous_store

    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend="nccl" if cuda else "gloo",
        store=rendezvous_store(master_addr, master_port, rank, world_size, timeout),
        rank=rank,
        world_size=world_size,
        timeout=timeout,
    )


class TrainerActor:
    """Holds one backend rank; every method is a direct call so the driver can use it with or without Ray."""

    def __init__(
        self,
        kind: str,
        config: Any,
        rank: int = 0,
        world_size: int = 1,
        master_addr: str | None = None,
        master_port: int | None = None,
    ) -> None:
        self.rank, self.world_size = rank, world_size
        if world_size > 1:
            if master_addr is None or master_port is None:
                raise ValueError("several trainer ranks need master_addr and master_port")
            init_process_group(rank, world_size, master_addr, master_port, cuda=uses_cuda(config))
            log.info("trainer rank %d/%d joined %s:%d", rank, world_size, master_addr, master_port)
        self.backend = build_backend(kind, config)

    def compute_logprobs(
        self, samples: Sequence[TrainSample], reference: bool = False
    ) -> list[list[float]] | None:
        """Rank 0 returns every sample's logprobs in order; other ranks compute their share, return None."""
        out = self.backend.compute_logprobs(samples, reference=reference)
        return out if self.rank == 0 else None

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        return self.backend.train_step(samples)

    def sync_weights(self, urls: list[str], version: str, settings: SyncSettings) -> SyncStats:
        """Push the current policy weights to every engine as ``version`` (weight_sync.py's transports).

        ``named_weights()`` is collective, so every rank iterates it; only rank 0 sends.
        """
        named = self.backend.named_weights()
        if self.rank != 0:
            for _ in named:
                pass
            return SyncStats(version, 0.0, 0, 0, settings.transport)
        sender = getattr(self, "_weight_sender", None)
        if sender is None:
            sender = self._weight_sender = WeightSender()
        return sender.sync(named, urls, version, settings)

    def save(self, directory: str) -> None:
        self.backend.save(Path(directory))

    def load(self, directory: str) -> None:
        self.backend.load(Path(directory))

    def weights_digest(self) -> str:
        """SHA-256 of this rank's policy weights (names, shapes, bytes): equal on in-sync DP replicas."""
        digest = hashlib.sha256()
        for name, tensor in self.backend.named_weights():
            t = tensor.detach().cpu().contiguous()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.view(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def memory_stats(self, reset: bool = False) -> dict[str, Any]:
        """This rank's peak memory since the last reset: CUDA allocator peaks, or the process's peak RSS
        on CPU (benchmarks report it per role); ``reset`` starts a new CUDA peak window."""
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out: dict[str, Any] = {
                "kind": "cuda", "device": torch.cuda.get_device_name(),
                "max_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                "max_reserved_gb": torch.cuda.max_memory_reserved() / 2**30,
                "total_gb": torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / 2**30,
            }
            if reset:
                torch.cuda.reset_peak_memory_stats()
            return out
        import resource

        rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
        return {"kind": "host_rss", "device": "cpu", "max_allocated_gb": rss_kb / 2**20,
                "max_reserved_gb": rss_kb / 2**20, "total_gb": None}

    def ping(self) -> bool:
        return True

