"""One /generate per prompt group: the same samples as per-sample requests, exact-rid aborts per item,
and the collector's choice between the two."""

from __future__ import annotations

import asyncio

import pytest

from kuberl.worker.rollout.balancer import EngineBalancer
from kuberl.worker.rollout.dynamic_sampling import (
    CollectorSettings,
    TrackedEndpoint,
    collect_rollout,
)
from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.rollout.generate import (
    generate_batch,
    generate_group,
    make_group,
    prepare_request,
    rid_for,
)
from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer
from kuberl.worker.rollout.router import RouterClient
from kuberl.worker.rollout.sample import SampleStatus

PROMPT = [1, 89, 87, 275, 203]
SEEDED = {"temperature": 1.0, "sampling_seed": 7}


@pytest.fixture
def seeded_engine(tiny_model_dir):
    """An engine that honours sampling_seed (SGLang: --enable-deterministic-inference)."""
    from kuberl.worker.engine.server import EngineArgs, serve_in_thread

    handle = serve_in_thread(EngineArgs(model_path=str(tiny_model_dir), port=0,
                                        enable_deterministic_inference=True))
    yield handle
    handle.stop()


async def test_a_batched_group_gives_the_samples_of_per_sample_requests(seeded_engine):
    per_sample = make_group(PROMPT, 6, group_index=0, first_index=0, label="x")
    batched = make_group(PROMPT, 6, group_index=0, first_index=0, label="x")
    async with EngineClient(seeded_engine.url) as c:
        await generate_group(c, per_sample, SEEDED, max_new_tokens=12)
        requests_before = seeded_engine.engine.scheduler.counters["requests"]
        await generate_batch(c, batched, SEEDED, max_new_tokens=12)
    for a, b in zip(per_sample, batched, strict=True):
        assert a.response_ids == b.response_ids and a.status == b.status
        assert a.response_logprobs == pytest.approx(b.response_logprobs, abs=1e-5)
        assert a.weight_versions == b.weight_versions
    assert len({tuple(s.response_ids) for s in batched}) > 1  # per-sample seeds: samples differ
    assert seeded_engine.engine.scheduler.counters["requests"] - requests_before == 6


async def test_one_item_of_a_batch_aborts_alone_by_its_exact_rid(thread_engine):
    group = make_group(PROMPT, 3, group_index=0, first_index=40)
    async with EngineClient(thread_engine.url) as c:
        task = asyncio.create_task(generate_batch(c, group, {"temperature": 1.0, "ignore_eos": True},
                                                  max_new_tokens=60, rid_prefix="b"))
        counters = thread_engine.engine.scheduler.counters
        while counters["generation_tokens"] < 6:
            await asyncio.sleep(0.005)
        await c.abort(rid_for("b", 41))
        await task
    assert [s.status for s in group] == [SampleStatus.TRUNCATED, SampleStatus.ABORTED,
                                         SampleStatus.TRUNCATED]
    assert group[0].response_length == group[2].response_length == 60
    assert 0 < group[1].response_length < 60


async def test_finished_and_exhausted_samples_are_left_out_of_the_batch(thread_engine):
    group = make_group(PROMPT, 3, group_index=0, first_index=0)
    group[0].status = SampleStatus.COMPLETED
    group[1].append_response([5, 6, 7, 8], [-1.0] * 4, "default")  # budget of 4 used up
    assert prepare_request(group[1], {}, 4, "k", None) is None
    assert group[1].status is SampleStatus.TRUNCATED
    group[1].status = SampleStatus.PENDING
    async with EngineClient(thread_engine.url) as c:
        await generate_batch(c, group, {"temperature": 1.0, "ignore_eos": True}, max_new_tokens=4)
    assert group[0].response_length == 0 and group[1].response_ids == [5, 6, 7, 8]
    assert group[2].response_length == 4 and group[2].status is SampleStatus.TRUNCATED


async def test_an_unreachable_engine_fails_every_item_for_requeueing():
    group = make_group(PROMPT, 2, group_index=0, first_index=0)
    async with EngineClient("http://127.0.0.1:9", retries=0) as c:
        await generate_batch(c, group, {"temperature": 1.0}, max_new_tokens=4)
    assert {s.status for s in group} == {SampleStatus.FAILED}


class _Counting(EngineBalancer):
    """Counts the HTTP requests the collector sends (one per batch or per sample)."""

    def __init__(self, engines: list[EngineClient]) -> None:
        super().__init__(engines)
        self.single = self.batches = 0

    async def generate(self, *a, **kw):
        self.single += 1
        return await super().generate(*a, **kw)

    async def generate_batch(self, *a, **kw):
        self.batches += 1
        return await super().generate_batch(*a, **kw)


async def _grade(group):
    for s in group:
        s.reward = float(s.response_length % 2)


async def _collect(endpoint, prompt_ids, **kw):
    groups = iter([make_group(prompt_ids, 4, g, 4 * g, label="x") for g in range(2)])
    settings = CollectorSettings(target_groups=2, over_sampling_groups=2, max_new_tokens=6,
                                 sampling_params={"temperature": 1.0, "ignore_eos": True}, **kw)
    return await collect_rollout(endpoint, 0, settings,
                                 lambda n: [g for _, g in zip(range(n), groups, strict=False)],
                                 _grade, PartialRolloutBuffer())


async def test_the_collector_sends_one_request_per_group_unless_told_not_to(thread_engine):
    prompt = PROMPT
    on = _Counting([EngineClient(thread_engine.url)])
    result = await _collect(on, prompt)
    assert (on.batches, on.single) == (2, 0) and len(result.groups) == 2
    assert all(s.response_length == 6 for g in result.groups for s in g)
    off = _Counting([EngineClient(thread_engine.url)])
    await _collect(off, prompt, batch_groups=False)
    assert (off.batches, off.single) == (0, 8)
    bounded = _Counting([EngineClient(thread_engine.url)])  # groups of 4 cannot fit 3 slots
    await _collect(bounded, prompt, server_concurrency=3)
    assert (bounded.batches, bounded.single) == (0, 8)
    for ep in (on, off, bounded):
        await ep.aclose()


def test_the_router_client_never_batches_and_engines_do():
    router = RouterClient("http://127.0.0.1:1", [EngineClient("http://127.0.0.1:2")])
    assert not TrackedEndpoint(router, None, "r").sends_batches
    assert TrackedEndpoint(EngineBalancer([EngineClient("http://127.0.0.1:2")]), None, "r").sends_batches
    assert TrackedEndpoint(EngineClient("http://127.0.0.1:2"), None, "r").sends_batches
