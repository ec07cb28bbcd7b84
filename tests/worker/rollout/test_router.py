"""The smg router in front of engine processes: generation goes through it, a SIGKILLed engine is
replaced behind it mid-rollout with its samples requeued, and a crash loop ends in a clear error."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from pathlib import Path

import httpx
import pytest

from kuberl.errors import EngineError
from kuberl.worker.engine.launcher import EngineSpec, ManagedProcess, launch_engine
from kuberl.worker.rollout.dynamic_sampling import CollectorSettings, collect_rollout
from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.rollout.generate import make_group
from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer
from kuberl.worker.rollout.router import Router, RouterClient, find_smg, router_argv
from kuberl.worker.rollout.sample import SampleStatus
from kuberl.worker.rollout.supervisor import EngineFailedError, EngineSupervisor
from tests.worker.conftest import free_port

G = 4


def test_router_argv_takes_the_policy_from_router_args_once() -> None:
    argv = router_argv(["--policy", "round_robin", "--log-level", "warn"], ["http://a:1"], 30000,
                       host="0.0.0.0", request_timeout_secs=600, prometheus_port=29001, smg="/bin/smg")
    assert argv[:2] == ["/bin/smg", "launch"]
    assert argv.count("--policy") == 1 and argv[argv.index("--policy") + 1] == "round_robin"
    assert argv[argv.index("--request-timeout-secs") + 1] == "600" and "--disable-retries" in argv
    assert argv[argv.index("--health-check-interval-secs") + 1] == "2"
    assert argv[argv.index("--log-level") + 1] == "warn"
    default = router_argv([], [], 1, host="h", request_timeout_secs=1, prometheus_port=None)
    assert default[default.index("--policy") + 1] == "cache_aware"
    with pytest.raises(EngineError, match=r"routerArgs\.policy"):
        router_argv(["--policy"], [], 1, host="h", request_timeout_secs=1, prometheus_port=None)


async def test_a_crash_loop_ends_in_an_engine_failed_error_after_bounded_restarts() -> None:
    """An engine that never comes back: restarted max_restarts times, then a clear error (no hang)."""
    restarted: list[int] = []

    async def restart(index: int) -> str:
        restarted.append(index)
        return f"http://127.0.0.1:{free_port()}"  # nothing listens there: it is "dead" again

    sup = EngineSupervisor([f"http://127.0.0.1:{free_port()}"], restart, max_restarts=2,
                           probe_timeout_s=2)
    await sup.check()
    await sup.check()
    with pytest.raises(EngineFailedError, match=r"after 2 restarts.*engine-0\.log"):
        await sup.check()
    assert restarted == [0, 0]

    async def cannot_start(index: int) -> str:
        raise EngineError("exited with code 1 before it was ready")

    failing = EngineSupervisor([f"http://127.0.0.1:{free_port()}"], cannot_start, probe_timeout_s=2)
    with pytest.raises(EngineFailedError, match="could not be restarted: exited with code 1"):
        await failing.check()


def start_engine(model: Path, log_dir: Path, name: str) -> ManagedProcess:
    spec = EngineSpec(model_path=str(model), port=free_port(), kind="embedded")
    return launch_engine(spec, log_path=str(log_dir / f"{name}.log"))


async def running_requests(url: str) -> float:
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(url + "/metrics")).text
    m = re.search(r"^sglang:num_running_reqs\{[^}]*\} ([0-9.]+)", text, re.M)
    return float(m.group(1)) if m else 0.0


@pytest.mark.slow
async def test_engine_killed_mid_rollout_is_replaced_behind_the_router_and_its_samples_requeued(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    try:
        find_smg()
    except EngineError as e:
        pytest.fail(f"the dev extra installs smg: {e}")
    engines = [start_engine(tiny_model_dir, tmp_path, f"engine-{i}") for i in range(2)]
    spare: list[ManagedProcess] = []
    router = None
    try:
        await asyncio.gather(*(e.wait_ready(300) for e in engines))
        router = await Router.start(["--policy", "round_robin", "--log-level", "warn"],
                                    [e.url for e in engines], log_path=str(tmp_path / "router.log"))
        replaced: list[tuple[int, str]] = []

        async def restart(index: int) -> str:
            new = start_engine(tiny_model_dir, tmp_path, f"engine-{index}-restart")
            spare.append(new)
            await new.wait_ready(300)
            return new.url

        async def on_replaced(index: int, url: str) -> None:
            replaced.append((index, url))

        sup = EngineSupervisor([e.url for e in engines], restart, router, on_replaced=on_replaced)
        client = RouterClient(router.url, [EngineClient(e.url) for e in engines],
                              on_engine_failure=sup.check)
        counter = [0]

        def new_groups(n: int):
            out = []
            for _ in range(n):
                g = counter[0]
                out.append(make_group([5, 6, 7, 8], G, g, g * G))
                counter[0] += 1
            return out

        async def grade(group) -> None:
            for k, s in enumerate(group):
                s.reward = float(k % 2)

        settings = CollectorSettings(target_groups=4, over_sampling_groups=4, max_new_tokens=300,
                                     sampling_params={"temperature": 1.0, "ignore_eos": True})
        rollout = asyncio.ensure_future(collect_rollout(client, 0, settings, new_groups, grade,
                                                        PartialRolloutBuffer()))
        victim = engines[0]
        for _ in range(3000):
            if await running_requests(victim.url) > 0:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("no request reached the first engine")
        os.killpg(victim.proc.pid, signal.SIGKILL)
        result = await asyncio.wait_for(rollout, timeout=600)  # never a hang

        assert len(result.groups) == 4
        samples = [s for g in result.groups for s in g]
        assert all(s.status == SampleStatus.TRUNCATED and s.response_length == 300 for s in samples)
        assert sup.restarts == [1, 0] and replaced == [(0, spare[0].url)]
        listed = {w["url"]: w["is_healthy"] for w in await router.workers()}
        assert listed == {spare[0].url: True, engines[1].url: True}
        assert sorted(e.url for e in client.engines) == sorted(listed)  # aborts reach the new one
        await client.aclose()
    finally:
        if router is not None:
            router.stop()
        for proc in engines + spare:
            proc.stop()
