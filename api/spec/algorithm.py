"""spec.algorithm: advantage estimator, clipping, KL and entropy terms (slime's GRPO args)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kuberl.api.base import SpecModel
from kuberl.api.rules import Rule


class AdvantageEstimator(StrEnum):
    GRPO = "grpo"
    GSPO = "gspo"
    REINFORCE_PLUS_PLUS = "reinforce_plus_plus"
    REINFORCE_PLUS_PLUS_BASELINE = "reinforce_plus_plus_baseline"


class KlLossType(StrEnum):
    K1 = "k1"
    K2 = "k2"
    K3 = "k3"
    LOW_VAR_KL = "low_var_kl"


class AlgorithmSpec(SpecModel):
    """Policy-gradient settings. ``ppo`` (with a critic) is not offered: kuberl trains critic-free."""

    advantage_estimator: AdvantageEstimator = Field(AdvantageEstimator.GRPO, description="Estimator.")
    use_kl_loss: bool = Field(False, description="Add a KL-to-reference loss (loads the ref model).")
    kl_loss_coef: float = Field(0.0, ge=0, description="Weight of the KL loss.")
    kl_loss_type: KlLossType = Field(KlLossType.K1, description="KL estimator for the loss.")
    kl_coef: float = Field(0.0, ge=0, description="KL penalty folded into rewards (reinforce++).")
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus weight.")
    eps_clip: float = Field(0.2, gt=0, lt=1, description="PPO clip range (lower).")
    eps_clip_high: float | None = Field(None, gt=0, lt=10, description="Upper clip; default epsClip.")
    eps_clip_c: float | None = Field(None, gt=1, description="Dual-clip constant (> 1); off if unset.")
    normalize_advantages: bool = Field(False, description="Whiten advantages over the batch.")
    grpo_std_normalization: bool = Field(True, description="Divide GRPO advantages by group std.")
    calculate_per_token_loss: bool = Field(False, description="Per-token mean instead of per-sample.")
    use_tis: bool = Field(False, description="Truncated importance sampling vs rollout logprobs.")
    tis_clip: float = Field(2.0, gt=0, description="Upper TIS weight clip.")
    tis_clip_low: float = Field(0.0, ge=0, description="Lower TIS weight clip.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount for reinforce++ returns.")

    RULES = (
        Rule(
            id="clip-high-at-least-clip",
            cel="!has(self.epsClipHigh) || self.epsClipHigh >= self.epsClip",
            message="spec.algorithm.epsClipHigh must be >= epsClip (DAPO clip-higher), e.g. 0.28 with 0.2",
            check=lambda m: m.eps_clip_high is None or m.eps_clip_high >= m.eps_clip,
            field_path=".epsClipHigh",
        ),
        Rule(
            id="tis-bounds",
            cel="self.tisClipLow < self.tisClip",
            message="spec.algorithm.tisClipLow must be below tisClip",
            check=lambda m: m.tis_clip_low < m.tis_clip,
            field_path=".tisClipLow",
        ),
    )
