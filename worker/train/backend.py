"""The trainer backend protocol: what the driver asks of a trainer, whatever its parallelism.

A backend owns the model, the optimizer and (optionally) the frozen reference model. It receives whole
samples and does its own packing into micro-batches, so Megatron backends can pack sequences with
``cu_seqlens``, split them over tensor/pipeline/context-parallel ranks and gather per-sample results back.
The torch backend (one process, CPU or one GPU) is the reference implementation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch

from kuberl.worker.train.batch import TrainSample


@runtime_checkable
class TrainerBackend(Protocol):
    """Everything the GRPO loop needs from a trainer."""

    def compute_logprobs(
        self, samples: Sequence[TrainSample], *, reference: bool = False
    ) -> list[list[float]]:
        """Return per-sample response logprobs (R,) under the current (or reference) weights."""
        ...

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """Run one optimizer step on ``samples`` (one global batch); return namespaced metrics."""
        ...

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the policy weights under Hugging Face names (what SGLang loads)."""
        ...

    def export_hf_checkpoint(self, directory: Path) -> None:
        """Write the policy as a Hugging Face checkpoint (for engines loading from disk)."""
        ...

    def save(self, directory: Path) -> None:
        """Write weights, optimizer and scheduler state into ``directory``."""
        ...

    def load(self, directory: Path) -> None:
        """Restore what ``save`` wrote."""
        ...
