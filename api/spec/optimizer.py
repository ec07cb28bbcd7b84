"""spec.optimizer: optimizer and learning-rate schedule (slime's OPTIMIZER args)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kuberl.api.base import SpecModel
from kuberl.api.rules import Rule


class OptimizerType(StrEnum):
    ADAM = "adam"
    SGD = "sgd"


class LrDecayStyle(StrEnum):
    CONSTANT = "constant"
    LINEAR = "linear"
    COSINE = "cosine"


class OptimizerSpec(SpecModel):
    """AdamW-style optimizer with decoupled weight decay, gradient clipping and an LR schedule."""

    type: OptimizerType = Field(OptimizerType.ADAM, description="adam (decoupled weight decay) or sgd.")
    lr: float = Field(1e-6, gt=0, lt=1, description="Peak learning rate.")
    min_lr: float = Field(0.0, ge=0, description="Floor for linear/cosine decay.")
    lr_decay_style: LrDecayStyle = Field(LrDecayStyle.CONSTANT, description="LR schedule.")
    lr_warmup_iters: int = Field(0, ge=0, description="Linear warm-up steps.")
    weight_decay: float = Field(0.01, ge=0, le=1, description="Decoupled weight decay.")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam beta1.")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam beta2.")
    adam_eps: float = Field(1e-8, gt=0, description="Adam epsilon.")
    clip_grad: float = Field(1.0, ge=0, description="Gradient-norm clip; 0 disables it.")
    seed: int = Field(1234, ge=0, description="Training seed.")

    RULES = (
        Rule(
            id="min-lr-below-lr",
            cel="self.minLr <= self.lr",
            message="spec.optimizer.minLr must not exceed lr",
            check=lambda m: m.min_lr <= m.lr,
            field_path=".minLr",
        ),
    )
