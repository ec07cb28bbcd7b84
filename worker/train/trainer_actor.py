"""The trainer as a Ray actor: a thin shell that owns one backend and pushes weights to the engines."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kuberl.worker.train.backend import TrainerBackend
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.weight_sync import SyncStats, push_disk, push_tensors

AVAILABLE_BACKENDS = ("torch", "megatron")


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
    if kind == "megatron":  # imported lazily: megatron-core is only in the trainer image
        from kuberl.worker.train.megatron_backend import MegatronBackend, MegatronBackendConfig

        return MegatronBackend(MegatronBackendConfig.from_worker_config(config))
    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    return TorchBackend(TorchBackendConfig.from_worker_config(config))


class TrainerActor:
    """Holds the backend; every method is a direct call so the driver can use it with or without Ray."""

    def __init__(self, kind: str, config: Any) -> None:
        self.backend = build_backend(kind, config)
        self._scratch = Path(tempfile.mkdtemp(prefix="kuberl-weights-"))

    def compute_logprobs(self, samples: Sequence[TrainSample], reference: bool = False) -> list[list[float]]:
        return self.backend.compute_logprobs(samples, reference=reference)

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        return self.backend.train_step(samples)

    def sync_weights(self, urls: list[str], version: str, transport: str = "tensor") -> SyncStats:
        """Push the current policy weights to every engine and set their weight version."""
        if transport == "disk":
            path = self._scratch / version
            self.backend.export_hf_checkpoint(path)
            return asyncio.run(push_disk(urls, path, version))
        named = list(self.backend.named_weights())
        return asyncio.run(push_tensors(urls, named, version))

    def save(self, directory: str) -> None:
        self.backend.save(Path(directory))

    def load(self, directory: str) -> None:
        self.backend.load(Path(directory))

    def ping(self) -> bool:
        return True
