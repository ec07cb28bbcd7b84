"""The trainer backend protocol: what the driver asks of a trainer, whatever its parallelism.

A backend owns the model, the optimizer and (optionally) the frozen reference model. It receives whole
samples and does its own packing into micro-batches, so Megatron backends can pack sequences with
``cu_seqlens``, split them over tensor/pipeline/context-parallel ranks and gather per-sample results back.
The torch backend (one process, CPU or one GPU) is the reference implementation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from kuberl.worker.algo.losses import LossConfig
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


def common_backend_fields(config: Any) -> dict[str, Any]:
    """The resolved worker-config fields every backend config reads, under the backends' names.

    One place, so a knob added to the spec reaches both trainers (or neither) and is never read by one
    backend only by accident.
    """
    return {
        "hf_checkpoint": config.hf_checkpoint,
        "loss": LossConfig.from_algorithm(config.algorithm),
        "reward_kl_coef": float(config.algorithm.get("kl_coef", 0.0)),
        "optimizer": dict(config.optimizer),
        "micro_batch_size": config.micro_batch_size,
        "use_dynamic_batch_size": config.use_dynamic_batch_size,
        "max_tokens_per_gpu": config.max_tokens_per_gpu,
        "log_probs_max_tokens_per_gpu": config.log_probs_max_tokens_per_gpu,
        "ref_load": config.ref_load,
        "num_rollout": config.num_rollout,
        "num_steps_per_rollout": config.num_steps_per_rollout,
        "temperature": config.sampling["temperature"],
        "save_optim": config.save_optim,
    }


def needs_reference_model(loss: LossConfig, reward_kl_coef: float) -> bool:
    """A frozen reference is loaded only when a KL term uses it (the loss's or the reward's)."""
    return (loss.use_kl_loss and loss.kl_loss_coef > 0) or reward_kl_coef > 0
