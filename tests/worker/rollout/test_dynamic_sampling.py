"""Dynamic sampling and partial rollout against a real embedded engine (tiny model).

Invariants: the target number of groups is kept; dropped groups trigger top-up waves; in-flight requests
are aborted at the engine once the target is reached and the engine goes idle; aborted samples keep their
partial tokens and logprobs and continue later; no launched group is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from kuberl.errors import SpecError
from kuberl.worker.rollout.balancer import EngineBalancer
from kuberl.worker.rollout.dynamic_sampling import (
    CollectorSettings,
    collect_rollout,
    mark_stale,
    stale_token_handling,
)
from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.rollout.filters import check_reward_nonzero_std
from kuberl.worker.rollout.generate import make_group
from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer
from kuberl.worker.rollout.sample import Sample, SampleStatus

G = 4
# Long enough that no group finishes during the 1 s a slow grader holds the target back, whatever the
# machine's speed (the tiny model's context is 1024 tokens).
LONG = 900


def source(prompt_ids: list[int]) -> tuple[Callable[[int], list[list[Sample]]], list[int]]:
    """A fresh-group source that records how many groups it handed out."""
    counter = [0]

    def next_groups(n: int) -> list[list[Sample]]:
        out = []
        for _ in range(n):
            g = counter[0]
            out.append(make_group(prompt_ids, G, g, g * G))
            counter[0] += 1
        return out

    return next_groups, counter


def reward_by_group(rule: Callable[[int, int], float], slow_group: int | None = None):
    """Grade by (group, position); grading ``slow_group`` takes 1 s so others generate meanwhile."""

    async def grade(group: list[Sample]) -> None:
        if group[0].group_index == slow_group:
            await asyncio.sleep(1.0)
        for k, s in enumerate(group):
            s.reward = rule(s.group_index, k)

    return grade


def settings(**kw) -> CollectorSettings:
    base = dict(target_groups=2, over_sampling_groups=2, max_new_tokens=8,
                sampling_params={"temperature": 1.0, "ignore_eos": True})
    return CollectorSettings(**{**base, **kw})


@pytest.fixture
def endpoint(thread_engine):
    return EngineBalancer([EngineClient(thread_engine.url)])


@pytest.fixture
def prompt_ids(tiny_tokenizer) -> list[int]:
    return tiny_tokenizer.encode("what is 1 + 2", add_special_tokens=False)


async def test_dropping_filter_triggers_top_up_wave(endpoint, prompt_ids):
    next_groups, handed = source(prompt_ids)
    # Groups 0-1 (first wave) have equal rewards -> dropped; later groups vary within the group.
    grade = reward_by_group(lambda g, k: 1.0 if g < 2 else float(k % 2))
    result = await collect_rollout(endpoint, 0, settings(), next_groups, grade,
                                   PartialRolloutBuffer(), check_reward_nonzero_std)
    assert result.waves >= 2
    assert result.dropped["zero_std"] == 2
    assert len(result.groups) == 2 and all(g[0].group_index >= 2 for g in result.groups)
    assert handed[0] >= 4


async def test_target_reached_aborts_in_flight_and_keeps_partials(endpoint, prompt_ids, thread_engine):
    next_groups, handed = source(prompt_ids)
    buffer = PartialRolloutBuffer()
    done = make_group(prompt_ids, G, 999, 10_000)
    for s in done:  # an already finished group in the buffer reaches the target at once
        s.append_response([5, 6], [-0.1, -0.2], "0")
        s.status = SampleStatus.COMPLETED
    buffer.put(done)
    result = await collect_rollout(
        endpoint, 3, settings(target_groups=1, over_sampling_groups=6, max_new_tokens=LONG,
                              partial_rollout=True),
        next_groups, reward_by_group(lambda g, k: float(k), slow_group=999), buffer,
    )
    assert [g[0].group_index for g in result.groups] == [999]
    assert result.aborted_samples > 0
    partial = [s for g in buffer.groups for s in g if 0 < s.response_length < LONG]
    assert partial, "aborted samples should keep their partial tokens"
    for s in partial:
        assert s.status == SampleStatus.PENDING
        assert len(s.response_logprobs) == len(s.response_ids) == len(s.loss_mask)
        assert s.metadata["start_rollout_id"] == 3
    # Every launched group is accounted for: kept, or back in the buffer.
    assert len(result.groups) + len(buffer) == handed[0] + 1
    # The engine is idle: flushing the cache is refused while anything runs.
    async with EngineClient(thread_engine.url) as client:
        assert await client.flush_cache()


def finished_group(prompt_ids: list[int], group_index: int) -> list[Sample]:
    group = make_group(prompt_ids, G, group_index, 10_000 + group_index * G)
    for s in group:
        s.append_response([5, 6], [-0.1, -0.2], "0")
        s.status = SampleStatus.COMPLETED
    return group


async def test_resumed_samples_concatenate_tokens_and_logprobs(endpoint, prompt_ids):
    next_groups, _ = source(prompt_ids)
    buffer = PartialRolloutBuffer()
    buffer.put(finished_group(prompt_ids, 999))
    await collect_rollout(
        endpoint, 0, settings(target_groups=1, over_sampling_groups=4, max_new_tokens=LONG,
                              partial_rollout=True),
        next_groups, reward_by_group(lambda g, k: float(k), slow_group=999), buffer,
    )
    partial = {s.index: (list(s.response_ids), list(s.response_logprobs))
               for g in buffer.groups for s in g if s.response_length}
    assert partial
    buffered = len(buffer)
    result = await collect_rollout(
        endpoint, 1, settings(target_groups=buffered, over_sampling_groups=buffered,
                              max_new_tokens=LONG, partial_rollout=True),
        lambda n: [], reward_by_group(lambda g, k: float(k)), buffer,
    )
    finished = {s.index: s for g in result.groups for s in g}
    assert result.resumed_samples > 0 and result.tokens_reused > 0
    for index, (ids, logprobs) in partial.items():
        s = finished[index]
        assert s.response_ids[: len(ids)] == ids and s.response_logprobs[: len(ids)] == logprobs
        assert s.response_length == LONG  # ignore_eos: the whole budget, across both turns
        assert len(s.response_logprobs) == LONG
        assert s.metadata["start_rollout_id"] == 0


async def test_without_partial_rollout_aborted_prompts_are_requeued_not_lost(endpoint, prompt_ids):
    next_groups, handed = source(prompt_ids)
    buffer = PartialRolloutBuffer()
    done = make_group(prompt_ids, G, 999, 10_000)
    for s in done:
        s.append_response([5], [-0.1], "0")
        s.status = SampleStatus.COMPLETED
    buffer.put(done)
    result = await collect_rollout(
        endpoint, 0, settings(target_groups=1, over_sampling_groups=4, max_new_tokens=LONG),
        next_groups, reward_by_group(lambda g, k: float(k)), buffer,
    )
    assert result.aborted_samples > 0 and result.tokens_wasted >= 0
    requeued = [s for g in buffer.groups for s in g]
    assert requeued and all(s.response_length == 0 or s.status.is_finished for s in requeued)
    assert len(result.groups) + len(buffer) == handed[0] + 1


async def test_zero_std_everywhere_fails_naming_collapse_not_the_filter(endpoint, prompt_ids):
    """Seen on 2xH200: a collapsed policy gives every group one reward; the message says so."""
    next_groups, _ = source(prompt_ids)
    with pytest.raises(Exception, match=r"identical rewards \(zero std\).*spec\.optimizer\.lr"):
        await collect_rollout(
            endpoint, 0, settings(max_new_tokens=2, max_waves=3), next_groups,
            reward_by_group(lambda g, k: 0.0), PartialRolloutBuffer(), check_reward_nonzero_std,
        )


async def test_custom_filter_dropping_everything_names_the_filter_field(endpoint, prompt_ids):
    next_groups, _ = source(prompt_ids)
    with pytest.raises(Exception, match="dynamicSamplingFilterPath drops almost everything"):
        await collect_rollout(
            endpoint, 0, settings(max_new_tokens=2, max_waves=3), next_groups,
            reward_by_group(lambda g, k: float(k)), PartialRolloutBuffer(),
            lambda args, group, **kw: False,
        )


def test_buffer_state_round_trip_keeps_partial_samples(prompt_ids):
    buffer = PartialRolloutBuffer()
    group = make_group(prompt_ids, 2, 7, 70, label="3", metadata={"start_rollout_id": 4})
    group[0].append_response([1, 2, 3], [-0.5, -0.25, -1.0], "2")
    buffer.put(group)
    restored = PartialRolloutBuffer()
    restored.load_state_dict(buffer.state_dict())
    assert restored.state_dict() == buffer.state_dict()
    s = restored.groups[0][0]
    assert s.response_ids == [1, 2, 3] and s.weight_versions[0]["version"] == "2"
    assert s.metadata["start_rollout_id"] == 4


# ---- aborts on real-SGLang terms: exact rids, re-sent until every request came back ------------------------

class LateArrival:
    """An endpoint whose requests reach the engine ``delay_s`` after the collector sent them (network or
    tokenizer latency): an abort sent in between finds no registered rid and is dropped by the engine."""

    def __init__(self, client: EngineClient, delay_s: float) -> None:
        self.client, self.delay_s, self.aborts = client, delay_s, []

    async def generate(self, *args, **kwargs):
        await asyncio.sleep(self.delay_s)
        return await self.client.generate(*args, **kwargs)

    async def abort(self, rid=None, abort_all=False):
        assert rid and not abort_all, "the collector must abort exact rids, never everything"
        self.aborts.append(rid)
        await self.client.abort(rid)


async def test_an_abort_that_beats_its_request_to_the_engine_is_resent(thread_engine, prompt_ids):
    next_groups, _ = source(prompt_ids)
    buffer = PartialRolloutBuffer()
    buffer.put(finished_group(prompt_ids, 999))  # reaches the target at once
    async with EngineClient(thread_engine.url) as client:
        endpoint = LateArrival(client, delay_s=0.5)
        result = await collect_rollout(
            endpoint, 0, settings(target_groups=1, over_sampling_groups=3, max_new_tokens=LONG,
                                  partial_rollout=True),
            next_groups, reward_by_group(lambda g, k: float(k)), buffer,
        )
    assert [g[0].group_index for g in result.groups] == [999]
    assert result.abort_rounds >= 2  # the first round was dropped: nothing was registered yet
    samples = [s for g in buffer.groups for s in g]
    assert len(samples) == 2 * G and result.late_groups_buffered == 0  # the wave: 999 + 2 fresh
    assert all(s.response_length < LONG for s in samples), "an aborted request ran to the end"
    # exact rids, one per sample that was in flight (the rid ends with the sample index)
    assert {int(r.rsplit("-", 1)[1]) for r in endpoint.aborts} == {s.index for s in samples}


async def test_aborts_hit_only_the_collectors_own_requests(thread_engine, prompt_ids):
    next_groups, _ = source(prompt_ids)
    buffer = PartialRolloutBuffer()
    buffer.put(finished_group(prompt_ids, 999))
    long = {"temperature": 1.0, "max_new_tokens": 300, "ignore_eos": True}
    async with EngineClient(thread_engine.url) as client:
        other_user = asyncio.create_task(client.generate(prompt_ids, long, rid="someone-else-1"))
        result = await collect_rollout(
            EngineBalancer([EngineClient(thread_engine.url)]), 0,
            settings(target_groups=1, over_sampling_groups=3, max_new_tokens=LONG),
            next_groups, reward_by_group(lambda g, k: float(k), slow_group=999), buffer,
        )
        other = await other_user
    assert result.aborted_samples > 0
    assert other.finish_reason == {"type": "length", "length": 300}  # no abort_all


class AbortLog(LateArrival):
    """LateArrival that also passes abort_all on, recording it as ``"*"``."""

    async def abort(self, rid=None, abort_all=False):
        self.aborts.append("*" if abort_all else rid)
        await self.client.abort(rid, abort_all=abort_all)


@pytest.mark.parametrize("delay_s", [0.0, 0.5])
async def test_exclusive_engines_abort_everything_once_then_exact_rids(thread_engine, prompt_ids, delay_s):
    """The driver's training rollout owns its engines: one abort_all stops every running response at once
    (partials kept); requests the engine had not registered yet (``delay_s``) get exact-rid rounds after."""
    next_groups, _ = source(prompt_ids)
    buffer = PartialRolloutBuffer()
    buffer.put(finished_group(prompt_ids, 999))
    async with EngineClient(thread_engine.url) as client:
        endpoint = AbortLog(client, delay_s=delay_s)
        result = await collect_rollout(
            endpoint, 0, settings(target_groups=1, over_sampling_groups=3, max_new_tokens=LONG,
                                  partial_rollout=True, exclusive_engines=True),
            next_groups, reward_by_group(lambda g, k: float(k), slow_group=None if delay_s else 999), buffer,
        )
    samples = [s for g in buffer.groups for s in g]
    assert len(samples) == 2 * G and all(s.response_length < LONG for s in samples)
    assert endpoint.aborts[0] == "*" and endpoint.aborts.count("*") == 1
    if delay_s:  # abort_all found nothing registered: the stragglers were aborted by their own rids
        assert result.abort_rounds >= 2 and len(endpoint.aborts) > 1
        assert {int(r.rsplit("-", 1)[1]) for r in endpoint.aborts[1:]} == {s.index for s in samples}
    else:  # running mid-response when abort_all arrived: one round, partial tokens kept
        assert result.abort_rounds == 1 and endpoint.aborts == ["*"]
        assert all(s.response_length > 0 for s in samples)


# ---- late groups and stale tokens (issue 13) ----------------------------------------------------------------

def graded_group(prompt_ids, group_index: int, version: str) -> list[Sample]:
    group = make_group(prompt_ids, G, group_index, 10_000 + group_index * G)
    for s in group:
        s.append_response([5, 6, 7], [-0.1, -0.2, -0.3], version)
        s.status = SampleStatus.COMPLETED
    return group


@pytest.mark.parametrize("partial", [False, True])
async def test_groups_finishing_after_the_target_are_dropped_unless_partial_rollout(
    endpoint, prompt_ids, partial
):
    buffer = PartialRolloutBuffer()
    for g in range(3):
        buffer.put(graded_group(prompt_ids, g, "5"))
    result = await collect_rollout(
        endpoint, 0, settings(target_groups=1, over_sampling_groups=3, partial_rollout=partial,
                              policy_version="5"),
        lambda n: [], reward_by_group(lambda g, k: float(k)), buffer,
    )
    assert len(result.groups) == 1
    if partial:
        assert result.late_groups_buffered == 2 and len(buffer) == 2
        assert result.late_groups_dropped == 0
    else:
        assert result.late_groups_dropped == 2 and len(buffer) == 0
        assert result.extra_metrics()["rollout/late_groups_dropped"] == 2.0


@pytest.mark.parametrize(("mask", "tis", "trained"), [(True, False, 0), (False, True, 3),
                                                      (False, False, 0), (True, True, 0)])
async def test_finished_but_stale_samples_are_masked_or_left_to_tis(
    endpoint, prompt_ids, mask, tis, trained
):
    buffer = PartialRolloutBuffer()
    buffer.put(graded_group(prompt_ids, 0, "3"))  # finished under weights "3", trained under "4"
    result = await collect_rollout(
        endpoint, 1, settings(target_groups=1, over_sampling_groups=1, partial_rollout=True,
                              mask_offpolicy=mask, use_tis=tis, policy_version="4"),
        lambda n: [], reward_by_group(lambda g, k: float(k)), buffer,
    )
    assert all(sum(s.loss_mask) == trained for s in result.groups[0])
    assert result.stale_tokens == result.response_tokens == 3 * G
    assert result.extra_metrics()["rollout/offpolicy_token_fraction"] == 1.0


def test_only_the_tokens_of_older_weights_are_marked_stale():
    s = Sample(index=0, group_index=0, prompt_ids=[1])
    s.append_response([5, 6], [-0.1, -0.2], "1")
    s.append_response([7, 8, 9], [-0.1, -0.2, -0.3], "2")
    assert stale_token_handling(mask_offpolicy=False, use_tis=True) == "tis"
    assert stale_token_handling(mask_offpolicy=False, use_tis=False) == "mask"
    assert mark_stale([s], "2", mask=True) == (2, 5)
    assert s.loss_mask == [0, 0, 1, 1, 1]


# ---- spec knobs: maxContextLen, serverConcurrency, customGenerateFunctionPath, stop tokens ------------------

async def test_max_context_len_clamps_responses_and_counts_prompts_without_room(endpoint, prompt_ids):
    next_groups, _ = source(prompt_ids)
    long_prompt = make_group(prompt_ids * 4, G, 500, 5000)
    result = await collect_rollout(
        endpoint, 0, settings(target_groups=2, over_sampling_groups=2, max_new_tokens=50,
                              max_context_len=len(prompt_ids) + 6),
        lambda n: [long_prompt, *next_groups(n - 1)], reward_by_group(lambda g, k: float(k)),
        PartialRolloutBuffer(),
    )
    lengths = {g[0].group_index: [s.response_length for s in g] for g in result.groups}
    assert lengths[500] == [0] * G and lengths[0] == [6] * G
    assert result.over_context_samples == G


async def test_engine_context_length_bounds_requests_when_the_spec_sets_none(tiny_model_dir, prompt_ids):
    from kuberl.worker.engine.server import EngineArgs, serve_in_thread

    handle = serve_in_thread(EngineArgs(model_path=str(tiny_model_dir), port=0, context_length=32))
    try:
        next_groups, _ = source(prompt_ids)
        result = await collect_rollout(
            EngineBalancer([EngineClient(handle.url)]), 0,
            settings(target_groups=1, over_sampling_groups=1, max_new_tokens=200),
            next_groups, reward_by_group(lambda g, k: float(k)), PartialRolloutBuffer(),
        )  # without the clamp the engine answers 400 (prompt + max_new_tokens > 32)
    finally:
        handle.stop()
    assert [s.response_length for s in result.groups[0]] == [32 - len(prompt_ids)] * G


async def test_server_concurrency_bounds_requests_in_flight_per_engine(endpoint, prompt_ids):
    next_groups, _ = source(prompt_ids)
    result = await collect_rollout(
        endpoint, 0, settings(target_groups=3, over_sampling_groups=3, max_new_tokens=16,
                              server_concurrency=2),
        next_groups, reward_by_group(lambda g, k: float(k)), PartialRolloutBuffer(),
    )
    assert len(result.groups) == 3 and result.peak_in_flight == 2


async def custom_generate(args, sample, sampling_params, endpoint, evaluation=False):
    """A user hook in slime's shape: generates through the endpoint it is given (no rid: one is assigned)."""
    out = await endpoint.generate(sample.prompt_ids + sample.response_ids,
                                  {**sampling_params, "max_new_tokens": 4})
    sample.append_response(out.output_ids, out.logprobs, out.weight_version)
    sample.status = SampleStatus.from_finish_type(out.finish_type)
    sample.metadata["hook"] = (args, evaluation)
    return sample


async def test_custom_generate_function_replaces_generate_sample(endpoint, prompt_ids):
    next_groups, _ = source(prompt_ids)
    result = await collect_rollout(
        endpoint, 0, settings(target_groups=2, over_sampling_groups=2, max_new_tokens=50,
                              custom_generate=custom_generate),
        next_groups, reward_by_group(lambda g, k: float(k)), PartialRolloutBuffer(),
        filter_args="job-config",
    )
    samples = [s for g in result.groups for s in g]
    assert all(s.metadata["hook"] == ("job-config", False) for s in samples)
    assert all(s.response_length == 4 and s.status is SampleStatus.TRUNCATED for s in samples)


def test_stop_token_ids_with_ignore_eos_are_refused_naming_the_field():
    with pytest.raises(SpecError, match=r"spec\.rollout\.stopTokenIds"):
        settings(sampling_params={"ignore_eos": True, "stop_token_ids": [2]})
