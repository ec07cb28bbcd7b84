"""EngineBalancer failure handling against a live embedded engine and an address nobody listens on."""

from __future__ import annotations

import pytest

from kuberl.errors import EngineError
from kuberl.worker.rollout.balancer import EngineBalancer
from kuberl.worker.rollout.engine_client import EngineClient, EngineHTTPError
from tests.worker.conftest import free_port

PROMPT = [1, 89, 87, 275]
PARAMS = {"temperature": 0.0, "max_new_tokens": 4}


async def test_dead_engine_leaves_the_rotation_and_work_goes_to_the_live_one(thread_engine):
    dead = EngineClient(f"http://127.0.0.1:{free_port()}", retries=0)
    live = EngineClient(thread_engine.url)
    balancer = EngineBalancer([dead, live])
    failures = 0
    try:
        for k in range(4):
            try:
                out = await balancer.generate(PROMPT, PARAMS, rid=f"b-{k:04d}")
                assert len(out.output_ids) == 4
            except EngineHTTPError as e:
                assert e.retryable
                failures += 1
        assert failures == 1 and balancer.down == {dead.url}
        assert [e.url for e in balancer.healthy] == [live.url]
        assert await balancer.restore() == []  # still dead
        assert balancer.in_flight == {dead.url: 0, live.url: 0}
    finally:
        await balancer.aclose()


async def test_no_healthy_engine_is_an_engine_error():
    dead = EngineClient(f"http://127.0.0.1:{free_port()}", retries=0)
    balancer = EngineBalancer([dead])
    try:
        with pytest.raises(EngineHTTPError):
            await balancer.generate(PROMPT, PARAMS)
        with pytest.raises(EngineError, match="no healthy rollout engine"):
            balancer.pick()
    finally:
        await balancer.aclose()
