"""spec.eval: periodic evaluation; sampling settings fall back to spec.rollout's when unset."""

from __future__ import annotations

from pydantic import Field

from kuberl.api.base import SpecModel
from kuberl.api.rules import Rule
from kuberl.api.spec.rollout import RewardType


class EvalDataset(SpecModel):
    """One named evaluation set (slime: --eval-prompt-data NAME PATH)."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_.\-]{0,62}$", max_length=63,
                      description="Name used in metrics.")
    path: str = Field(..., min_length=1, description="Dataset file, .jsonl or .parquet.")
    input_key: str | None = Field(None, min_length=1, description="Prompt key; default rollout's.")
    label_key: str | None = Field(None, min_length=1, description="Label key; default rollout's.")
    rm_type: RewardType | None = Field(None, description="Grader; default rollout's.")


class EvalSpec(SpecModel):
    """Evaluation every ``interval`` rollouts on ``datasets``."""

    interval: int | None = Field(None, ge=1, description="Evaluate every N rollouts.")
    datasets: list[EvalDataset] = Field(default_factory=list, max_length=16, description="Eval sets.")
    n_samples_per_eval_prompt: int = Field(1, ge=1, description="Samples per eval prompt (avg@n).")
    max_response_len: int | None = Field(None, ge=1, description="Default: rollout.maxResponseLen.")
    max_prompt_len: int | None = Field(None, ge=1, description="Default: rollout.maxPromptLen.")
    temperature: float | None = Field(None, gt=0, le=10, description="Default: rollout.temperature.")
    top_p: float | None = Field(None, gt=0, le=1, description="Default: rollout.topP.")
    top_k: int | None = Field(None, ge=-1, description="Default: rollout.topK.")
    skip_eval_before_train: bool = Field(False, description="Skip the evaluation at rollout 0.")

    RULES = (
        Rule(
            id="interval-needs-datasets",
            cel="!has(self.interval) || size(self.datasets) > 0",
            message="spec.eval.interval needs at least one entry in spec.eval.datasets (name and path)",
            check=lambda m: m.interval is None or len(m.datasets) > 0,
            field_path=".datasets",
        ),
        Rule(
            id="unique-dataset-names",
            cel="self.datasets.all(d, self.datasets.exists_one(e, e.name == d.name))",
            message="spec.eval.datasets names must be unique: rename the duplicate",
            check=lambda m: len({d.name for d in m.datasets}) == len(m.datasets),
            field_path=".datasets",
        ),
    )
