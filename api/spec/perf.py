"""spec.perf: Megatron parallelism, recompute and dynamic batch size (slime's PERF args)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kuberl.api.base import SpecModel
from kuberl.api.rules import Rule


class RecomputeGranularity(StrEnum):
    FULL = "full"
    SELECTIVE = "selective"


class RecomputeMethod(StrEnum):
    UNIFORM = "uniform"
    BLOCK = "block"


class RecomputeSpec(SpecModel):
    """Activation recomputation (Megatron --recompute-*)."""

    granularity: RecomputeGranularity | None = Field(None, description="full or selective; off if unset.")
    method: RecomputeMethod | None = Field(None, description="uniform or block (full granularity).")
    num_layers: int | None = Field(None, ge=1, description="Layers per recompute unit.")

    RULES = (
        Rule(
            id="full-needs-method",
            cel="!has(self.granularity) || self.granularity != 'full' || (has(self.method) && has(self.numLayers))",
            message="spec.perf.recompute with granularity full needs method (uniform|block) and numLayers",
            check=lambda m: m.granularity != RecomputeGranularity.FULL
            or (m.method is not None and m.num_layers is not None),
            field_path=".method",
        ),
    )


class PerfSpec(SpecModel):
    """Parallelism sizes and token budgets; with dynamic batching microBatchSize is ignored."""

    tensor_model_parallel_size: int = Field(1, ge=1, le=64, description="TP size.")
    sequence_parallel: bool = Field(False, description="Megatron sequence parallel (needs TP > 1).")
    pipeline_model_parallel_size: int = Field(1, ge=1, le=64, description="PP size.")
    context_parallel_size: int = Field(1, ge=1, le=64, description="CP size.")
    expert_model_parallel_size: int = Field(1, ge=1, le=256, description="EP size.")
    expert_tensor_parallel_size: int = Field(1, ge=1, le=64, description="ETP size.")
    recompute: RecomputeSpec = Field(default_factory=RecomputeSpec, description="Recompute settings.")
    use_dynamic_batch_size: bool = Field(False, description="Pack micro-batches up to maxTokensPerGpu.")
    max_tokens_per_gpu: int | None = Field(None, ge=1, description="Token budget per GPU and micro-batch.")
    log_probs_max_tokens_per_gpu: int | None = Field(
        None, ge=1, description="Token budget for logprob passes; default maxTokensPerGpu."
    )

    RULES = (
        Rule(
            id="dynamic-batch-needs-budget",
            cel="!self.useDynamicBatchSize || has(self.maxTokensPerGpu)",
            message="spec.perf.useDynamicBatchSize needs spec.perf.maxTokensPerGpu (e.g. 4608)",
            check=lambda m: not m.use_dynamic_batch_size or m.max_tokens_per_gpu is not None,
            field_path=".maxTokensPerGpu",
        ),
        Rule(
            id="sequence-parallel-needs-tp",
            cel="!self.sequenceParallel || self.tensorModelParallelSize > 1",
            message="spec.perf.sequenceParallel needs tensorModelParallelSize > 1: raise TP or turn it off",
            check=lambda m: not m.sequence_parallel or m.tensor_model_parallel_size > 1,
            field_path=".sequenceParallel",
        ),
    )
