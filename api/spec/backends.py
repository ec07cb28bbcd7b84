"""spec.backends: which trainer and rollout engine implementation run the job."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kuberl.api.base import SpecModel


class TrainerBackend(StrEnum):
    AUTO = "auto"  # megatron in a cluster, torch for `kuberl train`
    MEGATRON = "megatron"
    TORCH = "torch"


class RolloutEngine(StrEnum):
    AUTO = "auto"  # sglang in a cluster, embedded for `kuberl train`
    SGLANG = "sglang"
    EMBEDDED = "embedded"


class BackendsSpec(SpecModel):
    """Both choices speak the same protocols, so the driver code path is the same either way."""

    trainer: TrainerBackend = Field(TrainerBackend.AUTO, description="Trainer implementation.")
    rollout: RolloutEngine = Field(RolloutEngine.AUTO, description="Rollout engine implementation.")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$", description="auto, cpu or cuda.")
