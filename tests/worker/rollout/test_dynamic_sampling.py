"""Dynamic sampling and partial rollout against a real embedded engine (tiny model).

Invariants: the target number of groups is kept; dropped groups trigger top-up waves; in-flight requests
are aborted at the engine once the target is reached and the engine goes idle; aborted samples keep their
partial tokens and logprobs and continue later; no launched group is lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from kuberl.worker.rollout.balancer import EngineBalancer
from kuberl.worker.rollout.dynamic_sampling import CollectorSettings, collect_rollout
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


async def test_filter_dropping_everything_fails_with_a_message(endpoint, prompt_ids):
    next_groups, _ = source(prompt_ids)
    with pytest.raises(Exception, match="dynamicSamplingFilterPath"):
        await collect_rollout(
            endpoint, 0, settings(max_new_tokens=2, max_waves=3), next_groups,
            reward_by_group(lambda g, k: 0.0), PartialRolloutBuffer(), check_reward_nonzero_std,
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
