"""The trainer as a Ray actor: a thin shell that owns one backend and pushes weights to the engines."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kuberl.worker.train.backend import TrainerBackend
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.weight_sync import SyncSettings, SyncStats, WeightSender

AVAILABLE_BACKENDS = ("torch",)


def check_backend_available(kind: str) -> None:
    """Fail before any cluster resource is used when the resolved trainer backend is not built."""
    if kind not in AVAILABLE_BACKENDS:
        from kuberl.errors import SpecError

        raise SpecError([
            f"spec.backends.trainer: the {kind} trainer backend is not available in this build "
            "(in a cluster 'auto' means megatron); set spec.backends.trainer: torch (one GPU per "
            "trainer) until it lands"
        ])


def build_backend(kind: str, config: Any) -> TrainerBackend:
    """Instantiate the trainer backend named by the resolved config."""
    check_backend_available(kind)
    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    return TorchBackend(TorchBackendConfig.from_worker_config(config))


class TrainerActor:
    """Holds the backend; every method is a direct call so the driver can use it with or without Ray."""

    def __init__(self, kind: str, config: Any) -> None:
        self.backend = build_backend(kind, config)

    def compute_logprobs(self, samples: Sequence[TrainSample], reference: bool = False) -> list[list[float]]:
        return self.backend.compute_logprobs(samples, reference=reference)

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        return self.backend.train_step(samples)

    def sync_weights(self, urls: list[str], version: str, settings: SyncSettings) -> SyncStats:
        """Push the current policy weights to every engine as ``version`` (weight_sync.py's transports).

        ``named_weights()`` is collective, so every rank iterates it; only rank 0 sends.
        """
        named = self.backend.named_weights()
        if _rank() != 0:
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

    def ping(self) -> bool:
        return True


def _rank() -> int:
    """This process's rank in the trainer's default group (0 without one)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
