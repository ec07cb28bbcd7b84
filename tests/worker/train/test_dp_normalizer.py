"""The global loss normaliser: splitting a step over simulated DP ranks and micro-batches changes nothing.

Each simulated rank takes its ``dp_shard`` share, packs it into micro-batches, and sums partial losses
computed with the normaliser of the FULL step; summing the ranks' gradients (what the all-reduce does)
must give the one-rank gradient, in per-sample and per-token modes, to fp64 rounding.
"""

from __future__ import annotations

import random

import pytest
import torch

from kuberl.worker.algo import losses
from kuberl.worker.algo.packing import pack_micro_batches
from kuberl.worker.train.dp_shard import shard_indices

ALGO = {"eps_clip": 0.2, "eps_clip_high": 0.28, "use_kl_loss": True, "kl_loss_coef": 0.05,
        "entropy_coef": 0.01, "use_tis": True, "tis_clip": 2.0}


def random_step(seed: int, n: int) -> dict[str, list[torch.Tensor]]:
    """n samples with response lengths 1..12; some tokens masked, one sample fully masked."""
    g = torch.Generator().manual_seed(seed)
    lengths = [random.Random(seed + i).randint(1, 12) for i in range(n)]
    masks = [(torch.rand(r, generator=g) > 0.2).double() for r in lengths]
    masks[0] = torch.zeros(lengths[0], dtype=torch.float64)  # counts in S, trains no token

    def logp(r: int) -> torch.Tensor:
        return -torch.rand(r, generator=g, dtype=torch.float64) * 3

    return {
        "logprobs": [logp(r).requires_grad_() for r in lengths],
        "entropies": [torch.rand(r, generator=g, dtype=torch.float64).requires_grad_() for r in lengths],
        "old": [logp(r) for r in lengths],
        "rollout": [logp(r) for r in lengths],
        "ref": [logp(r) for r in lengths],
        "adv": [torch.randn(r, generator=g, dtype=torch.float64) for r in lengths],
        "masks": masks,
    }


def partial_loss(step: dict[str, list[torch.Tensor]], idx: list[int], normalizer: losses.LossNormalizer,
                 per_token: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    def pick(key: str) -> list[torch.Tensor]:
        return [step[key][i] for i in idx]

    return losses.grpo_loss_sum(
        logprobs=pick("logprobs"), old_logprobs=pick("old"), advantages=pick("adv"),
        loss_masks=pick("masks"), normalizer=normalizer,
        config=losses.LossConfig.from_algorithm({**ALGO, "calculate_per_token_loss": per_token}),
        rollout_logprobs=pick("rollout"), ref_logprobs=pick("ref"), entropies=pick("entropies"),
    )


def grads(step: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    out = [t.grad if t.grad is not None else torch.zeros_like(t)
           for t in step["logprobs"] + step["entropies"]]
    for t in step["logprobs"] + step["entropies"]:
        t.grad = None
    return torch.cat(out)


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("dp_size", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("budget", [6, 15, 1000])
def test_split_over_ranks_and_micro_batches_gives_the_one_rank_loss_and_gradients(
    per_token: bool, dp_size: int, budget: int
) -> None:
    step = random_step(seed=dp_size * 100 + budget, n=13)
    n = len(step["masks"])
    normalizer = losses.LossNormalizer.from_masks(step["masks"], per_token=per_token)

    loss, terms = partial_loss(step, list(range(n)), normalizer, per_token)
    loss.backward()
    reference_grads = grads(step)

    lengths = [len(m) for m in step["masks"]]
    total = torch.zeros((), dtype=torch.float64)
    summed_terms: dict[str, float] = {}
    for share in shard_indices(lengths, dp_size):  # each simulated rank, same full-step normaliser
        for mb in pack_micro_batches([lengths[i] for i in share], budget):
            part, part_terms = partial_loss(step, [share[j] for j in mb], normalizer, per_token)
            part.backward()  # gradients accumulate across micro-batches AND ranks = all-reduce SUM
            total = total + part.detach()
            for k, v in part_terms.items():
                summed_terms[k] = summed_terms.get(k, 0.0) + float(v)
    assert float(total) == pytest.approx(float(loss.detach()), abs=1e-12)
    assert torch.allclose(grads(step), reference_grads, atol=1e-12, rtol=0)
    for k, v in terms.items():
        assert summed_terms[k] == pytest.approx(float(v), abs=1e-12), k


def test_averaging_instead_of_summing_over_ranks_would_be_wrong() -> None:
    """Guards the normalisation choice: a DDP-style mean over 2 ranks halves the gradient."""
    step = random_step(seed=5, n=8)
    normalizer = losses.LossNormalizer.from_masks(step["masks"], per_token=False)
    loss, _ = partial_loss(step, list(range(8)), normalizer, per_token=False)
    loss.backward()
    reference = grads(step)
    for share in shard_indices([len(m) for m in step["masks"]], 2):
        part, _ = partial_loss(step, share, normalizer, per_token=False)
        (part / 2).backward()
    assert torch.allclose(grads(step) * 2, reference, atol=1e-12)
    assert reference.abs().sum() > 0
