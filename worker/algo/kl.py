# pyright: strict
"""Per-token KL estimators between the current (or rollout) policy and the reference policy.

The estimators are Schulman's k1/k2/k3 (http://joschu.net/blog/kl-approx.html) with the log-ratio
taken as ``logprobs - ref_logprobs``, as slime's ``ppo_utils.compute_approx_kl`` does. ``low_var_kl``
is k3 clamped to [-10, 10]; slime clamps only that variant, so ``k3`` stays unclamped here too.
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch import Tensor

LOW_VAR_KL_CLAMP = 10.0
# k3(x) = e^x - 1 - x exceeds LOW_VAR_KL_CLAMP for every x outside about [-11, 2.6], so clamping the
# log-ratio to +-20 before exp changes no clamped value, yet keeps e^x finite: in float32 e^x overflows
# above 88, and the outer clamp's zero gradient times an infinite one is NaN.
LOW_VAR_KL_LOG_RATIO_CLAMP = 20.0


def upcast(t: Tensor) -> Tensor:
    """Return ``t`` in float32 if it is lower precision; float64 stays float64 (exactness tests)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


class KlType(StrEnum):
    """Which estimator of KL(pi || pi_ref) to use (``algorithm.klLossType``)."""

    K1 = "k1"
    K2 = "k2"
    K3 = "k3"
    LOW_VAR_KL = "low_var_kl"


def k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Return log(pi/pi_ref) per token: unbiased, high variance, can be negative."""
    return upcast(logprobs) - upcast(ref_logprobs)


def k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Return (log(pi/pi_ref))^2 / 2 per token: biased, low variance, never negative."""
    return k1(logprobs, ref_logprobs).pow(2) / 2.0


def k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Return r - 1 - log r with r = pi_ref/pi per token: unbiased and never negative."""
    log_r = upcast(ref_logprobs) - upcast(logprobs)
    return log_r.exp() - 1.0 - log_r


def low_var_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Return k3 clamped to [-10, 10], so one far-off token cannot dominate the loss.

    The log-ratio is clamped before ``exp`` (see ``LOW_VAR_KL_LOG_RATIO_CLAMP``), so the gradient stays
    finite (zero) however far the policies are apart, e.g. ``ref - logp > 88``.
    """
    log_r = (upcast(ref_logprobs) - upcast(logprobs)).clamp(
        -LOW_VAR_KL_LOG_RATIO_CLAMP, LOW_VAR_KL_LOG_RATIO_CLAMP
    )
    return (log_r.exp() - 1.0 - log_r).clamp(-LOW_VAR_KL_CLAMP, LOW_VAR_KL_CLAMP)


_ESTIMATORS = {KlType.K1: k1, KlType.K2: k2, KlType.K3: k3, KlType.LOW_VAR_KL: low_var_kl}


def approx_kl(logprobs: Tensor, ref_logprobs: Tensor, kind: KlType | str) -> Tensor:
    """Return the per-token KL estimate of type ``kind``; any shape in, same shape out (at least float32).

    Raises:
        ValueError: ``kind`` is not one of k1, k2, k3, low_var_kl.
    """
    try:
        estimator = _ESTIMATORS[KlType(kind)]
    except ValueError:
        names = ", ".join(k.value for k in KlType)
        raise ValueError(
            f"spec.algorithm.klLossType: unknown KL estimator {kind!r}; use one of {names}"
        ) from None
    return estimator(logprobs, ref_logprobs)


def masked_kl(
    logprobs: Tensor, ref_logprobs: Tensor, loss_mask: Tensor, kind: KlType | str
) -> Tensor:
    """Return the per-token KL with untrained tokens (mask 0) set to exactly zero."""
    return torch.where(loss_mask > 0, approx_kl(logprobs, ref_logprobs, kind), 0.0)
