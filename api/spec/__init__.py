"""The RLTrainingJob spec: one group per section of the reference workload."""

from __future__ import annotations

from pydantic import Field

from kuberl.api.base import SpecModel
from kuberl.api.rules import Rule, immutable
from kuberl.api.spec.algorithm import AdvantageEstimator, AlgorithmSpec, KlLossType
from kuberl.api.spec.backends import BackendsSpec, RolloutEngine, TrainerBackend
from kuberl.api.spec.checkpoint import CheckpointSpec
from kuberl.api.spec.cluster import ClusterSpec, EnvVar, GpuType, StorageSpec
from kuberl.api.spec.eval import EvalDataset, EvalSpec
from kuberl.api.spec.model import ArchitectureOverrides, ModelSpec
from kuberl.api.spec.optimizer import LrDecayStyle, OptimizerSpec, OptimizerType
from kuberl.api.spec.perf import PerfSpec, RecomputeGranularity, RecomputeMethod, RecomputeSpec
from kuberl.api.spec.placement import PlacementSpec
from kuberl.api.spec.rollout import RewardType, RolloutSpec
from kuberl.api.spec.sglang import SglangSpec


def _actor_gpus(m: RLTrainingJobSpec) -> int:
    return m.placement.actor_num_nodes * m.placement.actor_num_gpus_per_node


def _rollout_gpus(m: RLTrainingJobSpec) -> int:
    return _actor_gpus(m) if m.placement.colocate else (m.placement.rollout_num_gpus or 0)


_ACTOR_GPUS_CEL = "(self.placement.actorNumNodes * self.placement.actorNumGpusPerNode)"
_MODEL_PARALLEL_CEL = (
    "(self.perf.tensorModelParallelSize * self.perf.pipelineModelParallelSize"
    " * self.perf.contextParallelSize)"
)


class RLTrainingJobSpec(SpecModel):
    """Desired state of an RL post-training run."""

    model: ModelSpec = Field(..., description="Model checkpoint and architecture.")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoints.")
    rollout: RolloutSpec = Field(..., description="Data, rewards, sampling and batch sizes.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Periodic evaluation.")
    perf: PerfSpec = Field(default_factory=PerfSpec, description="Parallelism and batching.")
    algorithm: AlgorithmSpec = Field(default_factory=AlgorithmSpec, description="Loss settings.")
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec, description="Optimizer.")
    sglang: SglangSpec = Field(default_factory=SglangSpec, description="Rollout engines.")
    placement: PlacementSpec = Field(default_factory=PlacementSpec, description="GPU split.")
    cluster: ClusterSpec = Field(default_factory=ClusterSpec, description="Kubernetes placement.")
    backends: BackendsSpec = Field(default_factory=BackendsSpec, description="Implementations.")
    suspend: bool = Field(False, description="Suspend the job (its Ray cluster is deleted).")

    RULES = (
        Rule(
            id="rollout-gpus-divisible",
            cel=(
                "(self.placement.colocate ? " + _ACTOR_GPUS_CEL + " : "
                "(has(self.placement.rolloutNumGpus) ? self.placement.rolloutNumGpus : 0))"
                " % self.sglang.gpusPerEngine == 0"
            ),
            message=(
                "spec.placement.rolloutNumGpus (the actor GPUs when colocated) must be a multiple of "
                "spec.sglang.gpusPerEngine: change one of them"
            ),
            check=lambda m: _rollout_gpus(m) % m.sglang.gpus_per_engine == 0,
            field_path=".sglang.gpusPerEngine",
        ),
        Rule(
            id="model-parallel-divides-actor",
            cel=_ACTOR_GPUS_CEL + " % " + _MODEL_PARALLEL_CEL + " == 0",
            message=(
                "spec.perf tensorModelParallelSize x pipelineModelParallelSize x contextParallelSize must "
                "divide the actor GPUs (placement.actorNumNodes x actorNumGpusPerNode)"
            ),
            check=lambda m: _actor_gpus(m)
            % (
                m.perf.tensor_model_parallel_size
                * m.perf.pipeline_model_parallel_size
                * m.perf.context_parallel_size
            )
            == 0,
            field_path=".perf",
        ),
        Rule(
            id="tp-within-node",
            cel="self.perf.tensorModelParallelSize <= self.placement.actorNumGpusPerNode",
            message=(
                "spec.perf.tensorModelParallelSize must fit in one node "
                "(<= placement.actorNumGpusPerNode)"
            ),
            check=lambda m: m.perf.tensor_model_parallel_size <= m.placement.actor_num_gpus_per_node,
            field_path=".perf.tensorModelParallelSize",
        ),
        Rule(
            id="kl-loss-needs-reference",
            cel=(
                "!self.algorithm.useKlLoss || self.algorithm.klLossCoef == 0.0 || "
                "has(self.checkpoint.refLoad) || self.backends.trainer == 'torch'"
            ),
            message=(
                "spec.algorithm.useKlLoss with klLossCoef > 0 needs spec.checkpoint.refLoad "
                "(the reference model) for the Megatron trainer"
            ),
            check=lambda m: not m.algorithm.use_kl_loss
            or m.algorithm.kl_loss_coef == 0.0
            or m.checkpoint.ref_load is not None
            or m.backends.trainer == TrainerBackend.TORCH,
            field_path=".checkpoint.refLoad",
        ),
    )


# Spec groups that cannot change under a running job; spec.suspend and spec.rollout.numRollout can.
IMMUTABLE_GROUPS = (
    "model", "checkpoint", "eval", "perf", "algorithm", "optimizer", "sglang", "placement",
    "cluster", "backends",
)
TRANSITION_RULES = tuple(immutable(g) for g in IMMUTABLE_GROUPS)
# Every rollout field except numRollout is immutable.
MUTABLE_ROLLOUT_FIELDS = ("num_rollout",)

__all__ = [
    "IMMUTABLE_GROUPS", "MUTABLE_ROLLOUT_FIELDS", "TRANSITION_RULES",
    "AdvantageEstimator", "AlgorithmSpec", "ArchitectureOverrides", "BackendsSpec", "CheckpointSpec",
    "ClusterSpec", "EnvVar", "EvalDataset", "EvalSpec", "GpuType", "KlLossType", "LrDecayStyle",
    "ModelSpec", "OptimizerSpec", "OptimizerType", "PerfSpec", "PlacementSpec", "RLTrainingJobSpec",
    "RecomputeGranularity", "RecomputeMethod", "RecomputeSpec", "RewardType", "RolloutEngine",
    "RolloutSpec", "SglangSpec", "StorageSpec", "TrainerBackend",
]
