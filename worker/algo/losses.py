# pyright: strict
"""The policy loss of one optimizer step, written so that packing can never change it.

Every term is a weighted SUM over the response tokens of one micro-batch; the token weights come from a
``LossNormalizer`` computed once from the whole step (all micro-batches, all data-parallel ranks). Summing
the partial losses of any partition of the samples therefore gives the same loss, and the same
gradients, as one big batch:

    loss_step = sum_mb  sum_{t in mb}  w_t * term_t
    per-sample mode:  w_t = mask_t / (S * n_i)     (mean over each sample's tokens, then over S samples)
    per-token mode:   w_t = mask_t / N_step        (sum over all trained tokens / their number)

With data parallelism each rank calls ``policy_loss_sum`` on its own micro-batches with the same global
normaliser, and gradients must be SUMMED across ranks (multiply by the DP size if the framework
averages). Metrics use the same weights, so they add up across micro-batches the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint  # pyright: ignore[reportUnknownVariableType]

from kuberl.worker.algo.advantages import AdvantageEstimator
from kuberl.worker.algo.kl import KlType, approx_kl, upcast


@dataclass(frozen=True)
class LossConfig:
    """The loss knobs of ``spec.algorithm``, typed. Build it with ``from_algorithm``."""

    eps_clip: float = 0.2
    eps_clip_high: float = 0.2  # DAPO clip-higher: upper bound 1 + eps_clip_high
    eps_clip_c: float | None = None  # dual clip for A < 0 (> 1), off when None
    sequence_ratio: bool = False  # GSPO: one importance ratio per sequence
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.0
    kl_loss_type: KlType = KlType.K1
    entropy_coef: float = 0.0
    use_tis: bool = False
    tis_clip: float = 2.0
    tis_clip_low: float = 0.0
    per_token: bool = False  # calculate_per_token_loss

    def __post_init__(self) -> None:
        if self.eps_clip_c is not None and self.eps_clip_c <= 1.0:
            raise ValueError(
                f"spec.algorithm.epsClipC must be > 1 for dual-clip PPO, got {self.eps_clip_c}"
            )

    @classmethod
    def from_algorithm(cls, algorithm: Mapping[str, Any]) -> LossConfig:
        """Read the resolved ``algorithm`` dict (snake_case keys); missing keys take defaults."""
        eps_clip = float(algorithm.get("eps_clip", 0.2))
        high = algorithm.get("eps_clip_high")
        clip_c = algorithm.get("eps_clip_c")
        estimator = AdvantageEstimator(algorithm.get("advantage_estimator", "grpo"))
        return cls(
            eps_clip=eps_clip,
            eps_clip_high=eps_clip if high is None else float(high),
            eps_clip_c=None if clip_c is None else float(clip_c),
            sequence_ratio=estimator is AdvantageEstimator.GSPO,
            use_kl_loss=bool(algorithm.get("use_kl_loss", False)),
            kl_loss_coef=float(algorithm.get("kl_loss_coef", 0.0)),
            kl_loss_type=KlType(algorithm.get("kl_loss_type", "k1")),
            entropy_coef=float(algorithm.get("entropy_coef", 0.0)),
            use_tis=bool(algorithm.get("use_tis", False)),
            tis_clip=float(algorithm.get("tis_clip", 2.0)),
            tis_clip_low=float(algorithm.get("tis_clip_low", 0.0)),
            per_token=bool(algorithm.get("calculate_per_token_loss", False)),
        )


@dataclass(frozen=True)
class LossNormalizer:
    """The global denominator of one optimizer step, computed once from all its samples."""

    per_token: bool
    num_samples: int  # S, samples in the step (all micro-batches, all DP ranks)
    num_tokens: float  # N_step, trained (mask = 1) tokens in the step

    @classmethod
    def from_masks(
        cls, loss_masks: Iterable[Sequence[float] | Tensor], *, per_token: bool
    ) -> LossNormalizer:
        """Count samples and trained tokens over every loss mask (R_i,) of the step."""
        num_samples, num_tokens = 0, 0.0
        for mask in loss_masks:
            num_samples += 1
            num_tokens += float(torch.as_tensor(mask, dtype=torch.float64).sum())
        return cls(per_token=per_token, num_samples=num_samples, num_tokens=num_tokens)

    def token_weights(self, loss_masks: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
        """Return w (N,) over the concatenated response tokens of some of the step's samples.

        A sample with no trained token gets weight 0 everywhere but still counts in S (as in slime,
        where its mean over tokens is taken as 0).
        """
        if not loss_masks:
            return torch.zeros(0, dtype=dtype)
        if self.per_token:
            mask = torch.cat([m.to(dtype) for m in loss_masks])  # (N,)
            return mask / max(self.num_tokens, 1.0)
        parts: list[Tensor] = []
        for m in loss_masks:
            m = m.to(dtype)  # (R_i,)
            parts.append(m / (m.sum().clamp_min(1.0) * max(self.num_samples, 1)))
        return torch.cat(parts)  # (N,)


@dataclass
class LossOutput:
    """One micro-batch's share of the step: ``loss`` to backpropagate, and metric partial values.

    Metrics stay detached 0-dim tensors on the loss's device, so computing them never waits for the
    accelerator; ``merge_metrics`` turns a step's worth into floats once. ``sums`` add across
    micro-batches (and DP ranks) to the step's weighted means; ``maxima`` and ``minima`` combine with
    max/min.
    """

    loss: Tensor  # () with grad
    sums: dict[str, Tensor] = field(default_factory=dict[str, Tensor])
    maxima: dict[str, Tensor] = field(default_factory=dict[str, Tensor])
    minima: dict[str, Tensor] = field(default_factory=dict[str, Tensor])


def merge_metrics(outputs: Iterable[LossOutput]) -> dict[str, float]:
    """Return the step metrics (un-prefixed keys) from the micro-batch outputs of one step.

    Extremes over no trained token at all are left out rather than reported as infinities.
    """
    sums: dict[str, Tensor] = {}
    maxima: dict[str, Tensor] = {}
    minima: dict[str, Tensor] = {}
    for out in outputs:
        for k, v in out.sums.items():
            sums[k] = sums[k] + v if k in sums else v
        for k, v in out.maxima.items():
            maxima[k] = torch.maximum(maxima[k], v) if k in maxima else v
        for k, v in out.minima.items():
            minima[k] = torch.minimum(minima[k], v) if k in minima else v
    merged = {k: float(v) for k, v in {**sums, **maxima, **minima}.items()}
    return {k: v for k, v in merged.items() if not math.isinf(v) or k in sums}


def ppo_clip_loss(
    ratio: Tensor,
    advantages: Tensor,
    *,
    eps_clip: float,
    eps_clip_high: float,
    eps_clip_c: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Return per-token PPO-clip losses and a clipped flag, both shaped like ``ratio`` (N,).

    ``max(-r*A, -clip(r, 1-eps_clip, 1+eps_clip_high)*A)``; with dual clip, tokens with A < 0 are
    further capped at ``-eps_clip_c * A`` (https://arxiv.org/abs/1912.09729). The flag marks tokens
    where the clipped term won (slime's ``pg_clipfrac``).
    """
    unclipped = -ratio * advantages  # (N,)
    clipped = -ratio.clamp(1.0 - eps_clip, 1.0 + eps_clip_high) * advantages  # (N,)
    loss = torch.maximum(unclipped, clipped)
    if eps_clip_c is not None:
        loss = torch.where(advantages < 0, torch.minimum(loss, -eps_clip_c * advantages), loss)
    return loss, (clipped > unclipped)


def sequence_log_ratio(
    log_ratio: Tensor, loss_mask: Tensor, segment_ids: Tensor, num_sequences: int
) -> Tensor:
    """Return GSPO's per-sequence mean log-ratio over trained tokens, broadcast back to tokens (N,).

    ``s_i = exp(mean_t log(pi/pi_old))`` (https://arxiv.org/abs/2507.18071); the gradient flows
    through the mean to every trained token of the sequence. ``segment_ids`` (N,) names each token's
    sequence.
    """
    total = log_ratio.new_zeros(num_sequences).index_add(
        0, segment_ids, log_ratio * loss_mask
    )  # (B,)
    count = log_ratio.new_zeros(num_sequences).index_add(0, segment_ids, loss_mask)  # (B,)
    return (total / count.clamp_min(1.0))[segment_ids]  # (N,)


def policy_loss_sum(
    *,
    logprobs: Sequence[Tensor],
    old_logprobs: Sequence[Tensor],
    advantages: Sequence[Tensor],
    loss_masks: Sequence[Tensor],
    normalizer: LossNormalizer,
    config: LossConfig,
    rollout_logprobs: Sequence[Tensor] | None = None,
    ref_logprobs: Sequence[Tensor] | None = None,
    entropies: Sequence[Tensor] | None = None,
) -> LossOutput:
    """Return one micro-batch's partial loss and metrics; every list holds one (R_i,) per sample.

    Args:
        logprobs: current-policy logprobs of the response tokens, with grad.
        old_logprobs: the policy that generated the data (recomputed by the trainer, or the rollout's).
        advantages: per-token advantages.
        loss_masks: 1 for trained tokens, 0 otherwise.
        normalizer: the step's ``LossNormalizer`` (same for every micro-batch).
        config: loss knobs.
        rollout_logprobs: the engine's logprobs; enable TIS and the train/rollout mismatch metric.
        ref_logprobs: reference-model logprobs; enable the KL term (a loss only with use_kl_loss).
        entropies: per-token entropy of the current policy, with grad; a loss only with entropy_coef.
    """
    lp = torch.cat([upcast(x) for x in logprobs]) if logprobs else torch.zeros(0)  # (N,)
    dtype, device = lp.dtype, lp.device

    def flat(xs: Sequence[Tensor]) -> Tensor:
        out = torch.cat([x.detach().to(device=device, dtype=dtype) for x in xs]) if xs else lp
        if out.shape != lp.shape:
            raise ValueError(f"expected {lp.numel()} response tokens, got {out.numel()}")
        return out  # (N,)

    mask = flat(loss_masks)  # (N,)
    trained = mask > 0
    w = normalizer.token_weights(list(loss_masks), dtype).to(device)  # (N,)
    old = flat(old_logprobs)
    adv = flat(advantages)

    # Masked tokens get log-ratio 0, so padding logprobs (even -inf) cannot leak NaN into gradients.
    log_ratio = torch.where(trained, lp - old, 0.0)  # (N,)
    if config.sequence_ratio:
        # Segment ids built on the device from the per-sample tensors: no host-to-device copy.
        seg = (
            torch.cat(
                [
                    torch.full_like(x, i, dtype=torch.long, device=device)
                    for i, x in enumerate(logprobs)
                ]
            )
            if logprobs
            else torch.zeros(0, dtype=torch.long, device=device)
        )  # (N,)
        log_ratio = sequence_log_ratio(log_ratio, mask, seg, len(logprobs))
    ratio = log_ratio.exp()
    pg, clipped = ppo_clip_loss(
        ratio,
        adv,
        eps_clip=config.eps_clip,
        eps_clip_high=config.eps_clip_high,
        eps_clip_c=config.eps_clip_c,
    )  # (N,), (N,)

    sums: dict[str, Tensor] = {}

    def wsum(x: Tensor) -> Tensor:
        return (torch.where(trained, x, 0.0) * w).sum()

    if rollout_logprobs is not None:
        rollout = flat(rollout_logprobs)
        sums["logprob_diff"] = wsum((lp.detach() - rollout).abs())
        if config.use_tis:
            # Truncated IS between the trainer's old policy and the engine that sampled the tokens
            # (https://fengyao.notion.site/off-policy-rl); a constant weight, no gradient.
            raw = torch.where(trained, old - rollout, 0.0).exp()
            tis = raw.clamp(config.tis_clip_low, config.tis_clip)
            pg = pg * tis
            sums["tis"] = wsum(tis)
            sums["tis_clip_fraction"] = wsum((tis != raw).to(dtype))

    pg_loss = wsum(pg)
    loss = pg_loss
    sums["pg_loss"] = pg_loss.detach()
    sums["clip_fraction"] = wsum(clipped.to(dtype))
    sums["ppo_kl"] = wsum(old - lp.detach())
    sums["ratio_mean"] = wsum(ratio.detach())
    # No host sync: a micro-batch without trained tokens reports -inf / +inf, dropped when merged.
    r = ratio.detach()
    maxima = {
        "ratio_max": torch.where(trained, r, -math.inf).amax()
        if r.numel()
        else r.new_tensor(-math.inf)
    }
    minima = {
        "ratio_min": torch.where(trained, r, math.inf).amin()
        if r.numel()
        else r.new_tensor(math.inf)
    }

    if entropies is not None:
        ent = torch.cat([upcast(e).to(device) for e in entropies]) if entropies else lp  # (N,)
        entropy = wsum(ent)
        sums["entropy"] = entropy.detach()
        if config.entropy_coef:
            loss = loss - config.entropy_coef * entropy

    if ref_logprobs is not None:
        ref = flat(ref_logprobs)
        kl = wsum(approx_kl(torch.where(trained, lp, ref), ref, config.kl_loss_type))
        sums["kl"] = kl.detach()
        if config.use_kl_loss and config.kl_loss_coef:
            loss = loss + config.kl_loss_coef * kl

    sums["loss"] = loss.detach()
    return LossOutput(loss=loss, sums=sums, maxima=maxima, minima=minima)


def grpo_loss_sum(
    *,
    logprobs: Sequence[Tensor],
    old_logprobs: Sequence[Tensor],
    advantages: Sequence[Tensor],
    loss_masks: Sequence[Tensor],
    normalizer: LossNormalizer,
    config: LossConfig,
    rollout_logprobs: Sequence[Tensor] | None = None,
    ref_logprobs: Sequence[Tensor] | None = None,
    entropies: Sequence[Tensor] | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Return (partial loss, additive metric sums) for one micro-batch.

    A thin adapter over ``policy_loss_sum`` for backends that add metrics up with ``+`` (values are
    detached 0-dim tensors); ratio max/min need ``policy_loss_sum`` and ``merge_metrics``.
    """
    if device is not None:
        logprobs = [x.to(device) for x in logprobs]
    out = policy_loss_sum(
        logprobs=logprobs,
        old_logprobs=old_logprobs,
        advantages=advantages,
        loss_masks=loss_masks,
        normalizer=normalizer,
        config=config,
        rollout_logprobs=rollout_logprobs,
        ref_logprobs=ref_logprobs,
        entropies=entropies,
    )
    return out.loss, out.sums


# ---- logits -> per-token quantities (chunk-safe) ------------------------------------------------


def _entropy_rows(logits: Tensor) -> Tensor:
    """(C, V) -> (C,): H = logsumexp(l) - sum softmax(l) * l."""
    logits = upcast(logits)
    return torch.logsumexp(logits, dim=-1) - (logits.softmax(dim=-1) * logits).sum(dim=-1)


def _logprob_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """(C, V), (C,) -> (C,): log softmax(l)[target]."""
    logits = upcast(logits)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _chunked(fn: Callable[..., Tensor], chunk_size: int | None, *tensors: Tensor) -> Tensor:
    """Apply ``fn`` row-chunk by row-chunk; under autograd each chunk is recomputed in backward, so
    only one chunk's (C, V) softmax is alive at a time. Results do not depend on ``chunk_size``."""
    n = tensors[0].shape[0]
    if not chunk_size or chunk_size >= n:
        return fn(*tensors)
    parts: list[Tensor] = []
    for start in range(0, n, chunk_size):
        piece = [t[start : start + chunk_size] for t in tensors]
        if torch.is_grad_enabled() and piece[0].requires_grad:
            parts.append(checkpoint(fn, *piece, use_reentrant=False))
        else:
            parts.append(fn(*piece))
    return torch.cat(parts)


def entropy_from_logits(
    logits: Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> Tensor:
    """Return per-token entropy (N,) of softmax(logits / temperature), logits (N, V)."""
    scaled = logits / temperature if temperature != 1.0 else logits
    return _chunked(_entropy_rows, chunk_size, scaled)


def logprobs_from_logits(
    logits: Tensor, targets: Tensor, *, temperature: float = 1.0, chunk_size: int | None = None
) -> Tensor:
    """Return log pi(target) per token (N,) from logits (N, V) divided by the sampling temperature
    (as the engine sampled), targets (N,)."""
    scaled = logits / temperature if temperature != 1.0 else logits
    return _chunked(_logprob_rows, chunk_size, scaled, targets)
