"""generate_sample against the embedded engine: statuses, resumption of aborted samples, rids."""

from __future__ import annotations

import asyncio

from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.rollout.generate import generate_group, generate_sample, make_group, rid_for
from kuberl.worker.rollout.sample import Sample, SampleStatus

PROMPT = [1, 89, 87, 275, 203]
SAMPLING = {"temperature": 1.0, "ignore_eos": True}


def test_rids_are_prefix_free():
    rids = [rid_for("r", i) for i in (1, 10, 100, 12)]
    assert not any(a != b and b.startswith(a) for a in rids for b in rids)


def test_make_group_numbers_samples_and_copies_metadata():
    g = make_group(PROMPT, 3, group_index=4, first_index=12, label="7", metadata={"a": [1]})
    assert [s.index for s in g] == [12, 13, 14] and {s.group_index for s in g} == {4}
    g[0].metadata["a"].append(2)
    assert g[1].metadata == {"a": [1]}


async def test_group_generation_fills_samples(thread_engine, tiny_tokenizer):
    group = make_group(PROMPT, 4, group_index=0, first_index=0, label="x")
    async with EngineClient(thread_engine.url) as c:
        await generate_group(c, group, SAMPLING, max_new_tokens=8, rollout_id=3,
                             decode=tiny_tokenizer.decode)
    for s in group:
        assert s.status is SampleStatus.TRUNCATED and s.response_length == 8
        assert len(s.response_logprobs) == len(s.loss_mask) == 8 and sum(s.loss_mask) == 8
        assert s.weight_versions == [{"version": "default", "start": 0, "end": 8}]
        assert s.metadata["start_rollout_id"] == 3
        assert s.response_text == tiny_tokenizer.decode(s.response_ids)


async def test_aborted_sample_resumes_with_the_remaining_budget(thread_engine):
    s = make_group(PROMPT, 1, group_index=0, first_index=7)[0]
    async with EngineClient(thread_engine.url) as c:
        task = asyncio.create_task(generate_sample(c, s, SAMPLING, max_new_tokens=200,
                                                   rollout_id=1))
        counters = thread_engine.engine.scheduler.counters
        while counters["generation_tokens"] < 5:
            await asyncio.sleep(0.005)
        await c.abort(rid_for("kuberl", 7))
        await task
        assert s.status is SampleStatus.ABORTED and 0 < s.response_length < 200
        partial = s.response_length
        await c.update_weight_version("2", abort_all_requests=False)
        await generate_sample(c, s, SAMPLING, max_new_tokens=200, rollout_id=2,
                              mask_offpolicy=True)
    assert s.status is SampleStatus.TRUNCATED and s.response_length == 200
    assert s.loss_mask == [0] * partial + [1] * (200 - partial)
    assert s.versions == ["default", "2"] and s.metadata["start_rollout_id"] == 1
    assert s.weight_versions[1] == {"version": "2", "start": partial, "end": 200}


async def test_sample_with_no_budget_left_is_truncated_without_a_request():
    s = Sample(index=0, group_index=0, prompt_ids=PROMPT, status=SampleStatus.ABORTED)
    s.append_response([5, 6], [-1.0, -1.0], "v0")

    class NoCalls:
        async def generate(self, *a, **k):
            raise AssertionError("no request expected")

    await generate_sample(NoCalls(), s, SAMPLING, max_new_tokens=2)
    assert s.status is SampleStatus.TRUNCATED


def test_sample_round_trips_through_dict():
    s = Sample(index=1, group_index=0, prompt_ids=[1], label="a", metadata={"k": 1})
    s.append_response([2, 3], [-0.1, -0.2], "v1")
    s.status = SampleStatus.COMPLETED
    t = Sample.from_dict(s.to_dict())
    assert t == s and t.tokens == [1, 2, 3] and t.effective_response_length == 2


def test_seeded_sampling_gives_each_sample_its_own_seed():
    from kuberl.worker.rollout.generate import request_params

    group = make_group(PROMPT, 3, group_index=0, first_index=6)
    seeds = [request_params({"sampling_seed": 42}, s, 8)["sampling_seed"] for s in group]
    assert seeds == [48, 49, 50]
    assert "sampling_seed" not in request_params({"temperature": 1.0}, group[0], 8)


async def test_max_context_len_clamps_the_request_and_skips_prompts_without_room(thread_engine):
    fits, too_long = make_group(PROMPT, 1, 0, 0)[0], Sample(index=1, group_index=1,
                                                            prompt_ids=PROMPT * 3)
    async with EngineClient(thread_engine.url) as c:
        await generate_sample(c, fits, SAMPLING, max_new_tokens=50,
                              max_context_len=len(PROMPT) + 5)
        await generate_sample(c, too_long, SAMPLING, max_new_tokens=50,
                              max_context_len=len(PROMPT) + 5)
    assert fits.status is SampleStatus.TRUNCATED and fits.response_length == 5
    assert too_long.status is SampleStatus.TRUNCATED and too_long.response_length == 0
    assert too_long.metadata["over_context"] and "over_context" not in fits.metadata
