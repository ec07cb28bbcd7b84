"""Scoring samples end to end: grader choice, the process pool's deadline, custom and remote graders."""

from __future__ import annotations

import asyncio
import os

import pytest
from aiohttp import web

from kuberl.errors import SpecError
from kuberl.worker.rewards.pool import GradingPool, GradingTimeout
from kuberl.worker.rewards.registry import choose
from kuberl.worker.rewards.scorer import RewardConfig, Scorer
from kuberl.worker.rollout.sample import Sample

USER = "tests.worker.rewards.user_rewards"


@pytest.fixture(scope="module")
def pool():
    p = GradingPool(workers=1, timeout_s=20)
    yield p
    p.close()


def sample(i: int, text: str, label="24", group=0, **meta) -> Sample:
    return Sample(index=i, group_index=group, prompt_ids=[1], response_text=text, label=label,
                  prompt=[{"role": "user", "content": "q"}], metadata=meta)


async def test_deepscaler_rows_score_in_the_pool(pool):
    samples = [
        sample(0, "<think>2^10 = 1024</think> The remainder is \\boxed{24}."),
        sample(1, "<think>hmm</think> \\boxed{23}"),
        sample(2, "\\boxed{24} without closing the thought"),
        sample(3, "<think>x</think> \\boxed{\\frac{3}{4}}", label="\\frac{3}{4}"),
    ]
    scores = await Scorer(RewardConfig(rm_type="deepscaler"), pool).score(samples)
    assert scores == [1.0, 0.0, 0.0, 1.0] and [s.reward for s in samples] == scores


async def test_per_sample_rm_type_overrides_the_default(pool):
    s = [sample(0, "Answer: 24", rm_type="dapo"), sample(1, "Answer: 24")]
    assert await Scorer(RewardConfig(rm_type="f1"), pool).score(s) == [1.0, pytest.approx(2 / 3)]


async def test_stuck_grader_scores_zero_and_its_worker_is_replaced():
    p = GradingPool(workers=1, timeout_s=1.0)
    try:
        assert await p.run("operator:add", 2, 3) == 5
        first = p.pids
        with pytest.raises(GradingTimeout):
            await p.run("time:sleep", 30, timeout_s=0.5)
        assert p.replaced == 1 and p.pids != first
        assert await p.run("operator:mul", 4, 5) == 20  # the replacement works
    finally:
        p.close()


async def test_custom_sync_function_runs_with_args_and_sample(pool):
    scorer = Scorer(RewardConfig(custom_rm_path=f"{USER}:length_reward"), pool, args={"min_chars": 5})
    assert await scorer.score([sample(0, "long enough"), sample(1, "abc")]) == [1.0, 0.0]


async def test_custom_dict_result_is_read_at_reward_key(pool):
    cfg = RewardConfig(custom_rm_path=f"{USER}:label_in_response", reward_key="score")
    assert await Scorer(cfg, pool).score([sample(0, "it is 24"), sample(1, "no")]) == [1.0, 0.0]


async def test_custom_async_function(pool):
    cfg = RewardConfig(custom_rm_path=f"{USER}:async_reward")
    assert await Scorer(cfg, pool).score([sample(0, "x")]) == [0.25]


async def test_group_reward_sees_each_group_whole(pool):
    cfg = RewardConfig(custom_rm_path=f"{USER}:rank_in_group", group_rm=True)
    samples = [sample(0, "ccc", group=0), sample(1, "a", group=0), sample(2, "bb", group=1),
               sample(3, "b", group=1)]
    assert await Scorer(cfg, pool).score(samples) == [1.0, 0.0, 1.0, 0.0]


async def test_failing_custom_function_scores_zero_with_the_error_recorded(pool):
    scorer = Scorer(RewardConfig(custom_rm_path=f"{USER}:raises"), pool)
    s = sample(0, "x")
    assert await scorer.score([s]) == [0.0]
    assert "grader bug" in s.metadata["reward_error"] and scorer.failures == 1


async def test_remote_grader_retries_until_the_service_answers(pool):
    calls = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        calls.append(body)
        if len(calls) == 1:
            return web.Response(status=503, text="warming up")
        return web.json_response({"score": 1.0 if body["label"] in body["response"] else 0.0})

    app = web.Application()
    app.router.add_post("/reward", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        cfg = RewardConfig(rm_type="remote", rm_url=f"http://127.0.0.1:{port}/reward")
        assert await Scorer(cfg, pool).score([sample(0, "it is 24")]) == [1.0]
        assert len(calls) == 2 and calls[1]["prompt"] == [{"role": "user", "content": "q"}]
    finally:
        await runner.cleanup()


def test_grader_choice_errors_name_the_field():
    with pytest.raises(SpecError, match="rmType"):
        choose({}, None, None, None)
    with pytest.raises(SpecError, match="rmUrl"):
        choose({}, "remote", None, None)
    with pytest.raises(SpecError, match="unknown grader 'nope'"):
        choose({}, "nope", None, None)


def test_pool_children_are_separate_processes(pool):
    async def pid():
        return await pool.run("os:getpid")

    assert asyncio.run(pid()) != os.getpid()
