"""Cheap built-in graders run inline in the driver; everything else keeps the process pool."""

from __future__ import annotations

import pytest

from kuberl.worker.rewards.pool import GradingPool
from kuberl.worker.rewards.registry import BUILTIN, Choice
from kuberl.worker.rewards.scorer import INLINE_BUILTINS, RewardConfig, Scorer, grades_inline
from kuberl.worker.rollout.sample import Sample


def sample(i: int, text: str, label: str, **meta) -> Sample:
    return Sample(index=i, group_index=0, prompt_ids=[1], response_text=text, label=label,
                  metadata=meta)


def test_only_cheap_builtins_are_graded_inline():
    assert grades_inline(Choice("builtin", "f1")) and grades_inline(Choice("builtin", "dapo"))
    assert not grades_inline(Choice("builtin", "math"))  # math-verify: can hang, needs a deadline
    assert not grades_inline(Choice("builtin", "deepscaler"))  # sympy
    assert not grades_inline(Choice("custom", "pkg.mod:f1"))
    assert not grades_inline(Choice("remote", "http://rm"))
    assert not grades_inline(Choice("builtin", "f1"), enabled=False)
    assert set(BUILTIN) >= INLINE_BUILTINS


class _NoPool(GradingPool):
    """A pool that fails the test if anything reaches it."""

    async def run(self, *a, **kw):
        raise AssertionError(f"the pool was used for {a[0]}")


async def test_inline_rewards_equal_the_pools_and_never_touch_it():
    texts = [("Answer: 24", "24"), ("the c", "c"), ("b a", "c"), ("Answer: 3/4", "\\frac{3}{4}")]
    inline = [sample(i, t, lab, rm_type="dapo" if t.startswith("Answer") else "f1")
              for i, (t, lab) in enumerate(texts)]
    pooled = [sample(i, t, lab, rm_type=s.metadata["rm_type"])
              for i, ((t, lab), s) in enumerate(zip(texts, inline, strict=True))]
    scorer = Scorer(RewardConfig(rm_type="f1"), _NoPool(workers=1))
    got = await scorer.score(inline)
    assert scorer.inline_graded == 4
    pool = GradingPool(workers=1, timeout_s=30)
    try:
        want = await Scorer(RewardConfig(rm_type="f1"), pool, inline=False).score(pooled)
    finally:
        pool.close()
    assert got == pytest.approx(want) and got[0] == 1.0 and got[2] == 0.0


async def test_a_failing_inline_grader_scores_zero_like_a_failing_pool_job():
    s = sample(0, "x", "y", rm_type="f1")
    s.response_text = None  # type: ignore[assignment]  # the grader raises on it
    scorer = Scorer(RewardConfig(rm_type="f1"), _NoPool(workers=1))
    assert await scorer.score([s]) == [0.0]
    assert scorer.failures == 1 and "f1" in s.metadata["reward_error"]
