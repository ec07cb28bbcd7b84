# pyright: strict
"""Advantages from rewards: GRPO/GSPO group normalisation and the two REINFORCE++ variants.

Everything here runs once per rollout on whole groups (before packing), so nothing depends on how the
samples are later split into micro-batches. Formulas follow slime (``rollout.py::_post_process_rewards``
and ``ppo_utils.py``); where slime asserts, this module picks a defined, NaN-free answer instead and says
so in the docstring.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, cast

import torch
from torch import Tensor

GROUP_STD_EPS = 1e-6  # slime: (r - mean) / (std + 1e-6)
WHITEN_EPS = 1e-8  # slime: distributed_masked_whiten(epsilon=1e-8)


class AdvantageEstimator(StrEnum):
    """Mirror of ``algorithm.advantageEstimator``."""

    GRPO = "grpo"
    GSPO = "gspo"
    REINFORCE_PLUS_PLUS = "reinforce_plus_plus"
    REINFORCE_PLUS_PLUS_BASELINE = "reinforce_plus_plus_baseline"

    @property
    def whitens(self) -> bool:
        """REINFORCE++ variants always whiten over the batch; GRPO/GSPO only when asked."""
        return self in (
            AdvantageEstimator.REINFORCE_PLUS_PLUS,
            AdvantageEstimator.REINFORCE_PLUS_PLUS_BASELINE,
        )


def _groups(rewards: Tensor, group_size: int) -> Tensor:
    """rewards (P*G,) -> (P, G); uneven counts fall back to one row, as slime does."""
    if group_size >= 1 and rewards.numel() % group_size == 0:
        return rewards.float().view(-1, group_size)  # (P, G)
    return rewards.float().view(1, -1)  # (1, B)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    std_normalization: bool = True,
    eps: float = GROUP_STD_EPS,
) -> Tensor:
    """Return GRPO advantages: rewards (P*G,) -> (P*G,), centred (and scaled) within each prompt.

    ``(r - mean_g) / (std_g + eps)`` with the unbiased (N-1) std of the G samples of a prompt; with
    ``std_normalization=False`` only the mean is removed (Dr.GRPO). A group of identical rewards gives
    exactly zero, fractional ones included: the rewards are first shifted by the group's first reward, so
    identical rewards become exact zeros before any rounding mean (a float mean of eight 0.7s is one ulp
    off, which ``/ (0 + eps)`` would blow up to 0.056). Groups of one sample are never divided.
    """
    r = _groups(rewards, group_size)  # (P, G)
    shifted = r.double() - r[:, :1].double()  # (P, G) exact zeros where a reward equals the first
    centred = shifted - shifted.mean(dim=-1, keepdim=True)  # (P, G)
    if std_normalization and r.shape[-1] > 1:
        centred = centred / (shifted.std(dim=-1, keepdim=True) + eps)
    return centred.float().reshape(-1)  # (P*G,)


gspo_advantages = group_advantages
"""GSPO uses the GRPO advantage unchanged; its sequence-level ratio lives in the loss."""


def zero_std_group_count(rewards: Tensor, group_size: int, *, tol: float = GROUP_STD_EPS) -> int:
    """Return how many prompt groups have (near-)identical rewards, i.e. carry no GRPO signal."""
    r = _groups(rewards, group_size)  # (P, G)
    if r.shape[-1] < 2:
        return int(r.shape[0])
    return int((r.std(dim=-1) <= tol).sum())


def broadcast_to_tokens(seq_values: Tensor, response_lengths: Sequence[int]) -> list[Tensor]:
    """Return one (R_i,) tensor per sample, every token holding its sample's scalar (B,) value."""
    if seq_values.numel() != len(response_lengths):
        raise ValueError(
            f"{seq_values.numel()} sequence values for {len(response_lengths)} responses"
        )
    values = cast(list[float], seq_values.tolist())  # pyright: ignore[reportUnknownMemberType]
    return [torch.full((n,), v) for v, n in zip(values, response_lengths, strict=True)]


def masked_whiten(
    values: Sequence[Tensor], loss_masks: Sequence[Tensor], *, eps: float = WHITEN_EPS
) -> list[Tensor]:
    """Return values whitened with the masked mean and unbiased variance of the whole batch.

    ``(v - mean) * rsqrt(var + eps)`` over all trained tokens of all samples (slime's
    ``distributed_masked_whiten`` with one DP rank). With no trained token at all the values come back
    unchanged instead of raising, since such a batch contributes no gradient anyway.
    """
    flat = torch.cat([v.float() for v in values]) if values else torch.zeros(0)  # (sum R,)
    mask = torch.cat([m.float() for m in loss_masks]) if loss_masks else torch.zeros(0)  # (sum R,)
    if flat.shape != mask.shape:
        raise ValueError(f"values cover {flat.numel()} tokens but loss masks {mask.numel()}")
    count = mask.sum()
    if count == 0:
        return [v.float().clone() for v in values]
    mean = (flat * mask).sum() / count
    var = ((flat - mean).pow(2) * mask).sum() / count
    if count >= 2:
        var = var * count / (count - 1)
    whitened = (flat - mean) * torch.rsqrt(var + eps)  # (sum R,)
    return list(torch.split(whitened, [v.numel() for v in values]))


def discounted_returns(token_rewards: Tensor, gamma: float) -> Tensor:
    """Return G_t = r_t + gamma * G_{t+1} for one response: (R,) -> (R,)."""
    if gamma == 1.0:
        return token_rewards.flip(0).cumsum(0).flip(0)
    out: list[float] = []
    running = 0.0
    for r in reversed(cast(list[float], token_rewards.tolist())):  # pyright: ignore[reportUnknownMemberType]
        running = r + gamma * running
        out.append(running)
    return torch.tensor(out[::-1], dtype=token_rewards.dtype)


def reinforce_plus_plus_returns(
    rewards: Tensor,
    kl: Sequence[Tensor],
    loss_masks: Sequence[Tensor],
    *,
    kl_coef: float,
    gamma: float,
) -> list[Tensor]:
    """Return REINFORCE++ returns (R_i,) per sample, before whitening.

    Token rewards are ``-kl_coef * kl_t`` on trained tokens, plus the scalar reward (B,) on the last
    trained token; returns are their discounted sums (https://arxiv.org/abs/2501.03262). A sample with
    no trained token gets the KL part only (slime asserts; it carries no loss either way).
    """
    out: list[Tensor] = []
    scalars = cast(list[float], rewards.tolist())  # pyright: ignore[reportUnknownMemberType]
    for reward, kl_i, mask in zip(scalars, kl, loss_masks, strict=True):
        token_rewards = -kl_coef * kl_i.float() * mask.float()  # (R,)
        trained = mask.nonzero()
        if trained.numel():
            token_rewards[int(trained[-1])] += reward
        out.append(discounted_returns(token_rewards, gamma))
    return out


def reinforce_plus_plus(
    rewards: Tensor,
    kl: Sequence[Tensor],
    loss_masks: Sequence[Tensor],
    *,
    kl_coef: float,
    gamma: float = 1.0,
) -> list[Tensor]:
    """Return REINFORCE++ advantages: discounted KL-shaped returns, whitened over the batch."""
    returns = reinforce_plus_plus_returns(rewards, kl, loss_masks, kl_coef=kl_coef, gamma=gamma)
    return masked_whiten(returns, loss_masks)


def reinforce_plus_plus_baseline(
    rewards: Tensor,
    kl: Sequence[Tensor],
    loss_masks: Sequence[Tensor],
    group_size: int,
    *,
    kl_coef: float,
) -> list[Tensor]:
    """Return REINFORCE++-baseline advantages: (r - group mean) on every token, minus kl_coef * kl,
    whitened over the batch."""
    centred = group_advantages(rewards, group_size, std_normalization=False)  # (P*G,)
    raw = [c - kl_coef * kl_i.float() for c, kl_i in zip(centred, kl, strict=True)]
    return masked_whiten(raw, loss_masks)


def compute_advantages(
    rewards: Tensor,
    response_lengths: Sequence[int],
    group_size: int,
    algorithm: Mapping[str, Any],
    *,
    kl: Sequence[Tensor] | None = None,
    loss_masks: Sequence[Tensor] | None = None,
) -> list[Tensor]:
    """Return per-token advantages (R_i,) for every sample, as ``algorithm`` (the resolved spec) says.

    Args:
        rewards: (P*G,) scalar rewards, samples of one prompt adjacent.
        response_lengths: R_i per sample.
        group_size: G, samples per prompt.
        algorithm: keys ``advantage_estimator``, ``grpo_std_normalization``, ``normalize_advantages``,
            ``kl_coef``, ``gamma`` (missing keys take the spec defaults).
        kl: per-token KL (R_i,) between the rollout policy and the reference, only read by the
            REINFORCE++ variants when ``kl_coef > 0``.
        loss_masks: (R_i,) per sample; all ones when omitted. Used for whitening.

    Raises:
        ValueError: unknown estimator, or REINFORCE++ with ``kl_coef > 0`` but no ``kl``.
    """
    estimator = AdvantageEstimator(algorithm.get("advantage_estimator", "grpo"))
    masks = (
        list(loss_masks) if loss_masks is not None else [torch.ones(n) for n in response_lengths]
    )
    kl_coef = float(algorithm.get("kl_coef", 0.0))
    if estimator.whitens:
        if kl is None:
            if kl_coef > 0:
                raise ValueError(
                    f"algorithm.klCoef={kl_coef} with {estimator.value} needs per-token KL to the "
                    "reference; compute ref logprobs before advantages or set klCoef to 0"
                )
            kl = [torch.zeros(n) for n in response_lengths]
        if estimator is AdvantageEstimator.REINFORCE_PLUS_PLUS:
            return reinforce_plus_plus(
                rewards, kl, masks, kl_coef=kl_coef, gamma=float(algorithm.get("gamma", 1.0))
            )
        return reinforce_plus_plus_baseline(rewards, kl, masks, group_size, kl_coef=kl_coef)
    seq = group_advantages(
        rewards, group_size, std_normalization=bool(algorithm.get("grpo_std_normalization", True))
    )
    tokens = broadcast_to_tokens(seq, response_lengths)
    if algorithm.get("normalize_advantages", False):
        tokens = masked_whiten(tokens, masks)
    return tokens
