"""The Megatron backend's data split: every DP rank derives its micro-batches from the full sample list,
the ranks together cover each sample exactly once, and no micro-batch exceeds the budget unless it holds
a single over-long sample. Combined with the global normaliser, the step's loss is that of one batch."""

from __future__ import annotations

import random

import pytest
import torch

from kuberl.worker.algo import losses
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.megatron_backend import rank_micro_batches


def make(n: int, seed: int) -> list[TrainSample]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, r = rng.randint(2, 30), rng.randint(1, 90)
        out.append(TrainSample(tokens=[1] * (p + r), prompt_len=p, advantages=[rng.uniform(-1, 1)] * r,
                               loss_mask=[int(rng.random() > 0.2) for _ in range(r)]))
    return out


@pytest.mark.parametrize("dp", [1, 2, 3, 4])
@pytest.mark.parametrize(("budget", "balance"), [(None, False), (128, False), (128, True), (64, True)])
def test_ranks_cover_every_sample_once_within_budget(dp: int, budget: int | None, balance: bool) -> None:
    samples = make(23, seed=dp)
    seen: list[int] = []
    for r in range(dp):
        for mb in rank_micro_batches(samples, r, dp, budget=budget, micro_batch_size=3, balance_data=balance):
            seen += mb
            if budget and len(mb) > 1:
                assert sum(samples[i].num_tokens for i in mb) <= budget
    assert sorted(seen) == list(range(len(samples)))


def test_loss_summed_over_simulated_ranks_equals_one_batch_loss() -> None:
    samples = make(17, seed=7)
    torch.manual_seed(0)
    lps = [torch.randn(s.response_len, dtype=torch.float64) * 0.1 - 2 for s in samples]
    algo = {"eps_clip": 0.2, "eps_clip_high": 0.28, "calculate_per_token_loss": False}
    for per_token in (False, True):
        algo["calculate_per_token_loss"] = per_token
        norm = losses.LossNormalizer.from_masks([s.loss_mask for s in samples], per_token=per_token)

        def part(idx: list[int], norm: losses.LossNormalizer = norm) -> float:
            loss, _ = losses.grpo_loss_sum(
                logprobs=[lps[i] for i in idx], old_logprobs=[lps[i] - 0.05 for i in idx],
                advantages=[torch.tensor(samples[i].advantages) for i in idx],
                loss_masks=[torch.tensor(samples[i].loss_mask, dtype=torch.float64) for i in idx],
                normalizer=norm, config=losses.LossConfig.from_algorithm(algo))
            return float(loss)

        whole = part(list(range(len(samples))))
        split = sum(part(mb) for r in range(3) for mb in rank_micro_batches(samples, r, 3, budget=100))
        assert split == pytest.approx(whole, rel=1e-12, abs=1e-12)


def test_adam_runs_on_the_distributed_optimizer_and_stateless_sgd_on_the_replicated_one() -> None:
    from kuberl.worker.train.megatron_backend import uses_distributed_optimizer

    assert uses_distributed_optimizer({"type": "adam"})
    assert not uses_distributed_optimizer({"type": "sgd"})
