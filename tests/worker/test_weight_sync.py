"""Weight sync: the transport is chosen from the config, each transport really changes what an engine
serves, and the version check catches an engine that did not take the update."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from kuberl.errors import SpecError
from kuberl.worker.rollout.engine_client import EngineClient, EngineHTTPError
from kuberl.worker.weight_sync import (
    SyncSettings,
    WeightClient,
    WeightSender,
    WeightSyncError,
    bucket_tensors,
    check_versions,
    choose_transport,
    disk_sync_dir,
    set_memory,
    sync_settings,
)
from tests.worker.conftest import free_port

PROMPT = [5, 6, 7]
GREEDY = {"max_new_tokens": 2, "temperature": 0}


def config(**kw) -> SimpleNamespace:
    base = dict(colocate=False, storage_path=None, job_name="job", rollout_engine="embedded",
                gpus_per_engine=1, hf_checkpoint="/models/m")
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """An embedded engine in its own process (a process group needs one side per process). Shared by
    this module's tests (starting one takes a while on a busy machine): each test pushes its own
    weights and version."""
    from kuberl.worker.engine.launcher import EngineSpec, launch_engine

    spec = EngineSpec(model_path=str(tiny_model_dir), port=free_port(), kind="embedded",
                      weight_version="0")
    proc = launch_engine(spec, log_path=str(tmp_path_factory.mktemp("engine") / "engine.log"))
    try:
        asyncio.run(proc.wait_ready(timeout_s=300))
        yield spec.url
    finally:
        proc.stop()


def flat_head(tiny_model_dir: Path, value: float = 0.0) -> list[tuple[str, torch.Tensor]]:
    """The tiny model's weights with a constant LM head: every token then has logprob -log(V)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return [(n, torch.full_like(t, value)) if n == "lm_head.weight" else (n, t.detach())
            for n, t in model.named_parameters()]


def uniform_logprob(tiny_model_dir: Path) -> float:
    from transformers import AutoConfig

    return -math.log(AutoConfig.from_pretrained(tiny_model_dir).vocab_size)


async def generate(url: str):
    async with EngineClient(url) as client:
        return await client.generate(PROMPT, GREEDY)


# ---- the pure parts --------------------------------------------------------------------------------
def test_buckets_respect_the_byte_budget_and_keep_order() -> None:
    named = [(f"w{i}", torch.zeros(n)) for i, n in enumerate([10, 10, 30, 5, 5])]  # float32: 4 B
    buckets = list(bucket_tensors(named, bucket_bytes=80))
    assert [[n for n, _ in b] for b in buckets] == [["w0", "w1"], ["w2"], ["w3", "w4"]]


def test_transport_follows_the_placement() -> None:
    assert choose_transport(config()) == "distributed"
    assert choose_transport(config(colocate=True)) == "ipc"
    assert choose_transport(config(), "disk") == "disk"
    with pytest.raises(SpecError, match=r"spec\.placement\.colocate"):
        choose_transport(config(), "ipc")
    with pytest.raises(SpecError, match="cannot run colocated"):
        choose_transport(config(colocate=True), "distributed")
    with pytest.raises(SpecError, match="unknown"):
        choose_transport(config(), "tensor")


def test_settings_use_nccl_on_gpus_and_engine_tp_for_sglang() -> None:
    gpu = sync_settings(config(rollout_engine="sglang", gpus_per_engine=4), "distributed",
                        use_gpus=True)
    assert (gpu.backend, gpu.device, gpu.gpus_per_engine) == ("nccl", "cuda", 4)
    cpu = sync_settings(config(), "distributed", use_gpus=False)
    assert (cpu.backend, cpu.device, cpu.gpus_per_engine) == ("gloo", "cpu", 1)
    with pytest.raises(ValueError, match="disk_dir"):
        sync_settings(config(), "disk", use_gpus=False)


def test_disk_goes_under_the_shared_storage_and_is_refused_without_it(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"spec\.cluster\.storage"):
        disk_sync_dir(config(), in_cluster=True, run_dir=tmp_path)
    shared = disk_sync_dir(config(storage_path="/data"), in_cluster=True, run_dir=tmp_path)
    assert shared.is_relative_to("/data") and "job" in shared.parts
    assert disk_sync_dir(config(), in_cluster=False, run_dir=tmp_path).is_relative_to(tmp_path)


# ---- the transports against a real engine process ---------------------------------------------------
def test_distributed_transport_over_gloo_changes_weights_and_keeps_its_group(
    engine: str, tiny_model_dir: Path
) -> None:
    sender = WeightSender()
    try:
        named = flat_head(tiny_model_dir)
        stats = sender.sync(iter(named), [engine], "1",
                            SyncSettings("distributed", bucket_bytes=64 * 1024))
        assert stats.calls > 1 and stats.transport == "distributed"  # several buckets
        asyncio.run(check_versions([engine], "1"))
        out = asyncio.run(generate(engine))
        assert out.weight_version == "1"
        assert out.logprobs[0] == pytest.approx(uniform_logprob(tiny_model_dir), abs=1e-4)
        group = sender._group_name
        sender.sync(iter(flat_head(tiny_model_dir, 0.01)), [engine], "2", SyncSettings("distributed"))
        assert sender._group_name == group  # formed once, reused while the engines stay the same
        sender.sync(iter(named), [engine], "3", SyncSettings("distributed", epoch=1))
        assert sender._group_name != group  # an engine replacement forms a new group
        asyncio.run(check_versions([engine], "3"))
    finally:
        sender.close()


def test_distributed_transport_fails_fast_when_an_engine_refuses(engine: str) -> None:
    """A bucket the engine cannot load (unknown name) is an error, not a hang in the broadcast."""
    sender = WeightSender()
    try:
        with pytest.raises(WeightSyncError, match="unknown parameter names"):
            sender.sync(iter([("no.such.weight", torch.zeros(4))]), [engine], "1",
                        SyncSettings("distributed"))
    finally:
        sender.close()


def test_colocated_ipc_transport_around_release_and_resume(engine: str, tiny_model_dir: Path) -> None:
    """The colocated cycle: release (generation refused) -> resume weights -> push -> resume KV."""

    async def released_generate_is_refused() -> None:
        with pytest.raises(EngineHTTPError, match="released"):
            await generate(engine)
        async with WeightClient(engine) as client:
            assert await client.get_weights_by_name("model.norm.weight", 2) == []

    asyncio.run(set_memory([engine], "release"))
    asyncio.run(released_generate_is_refused())
    asyncio.run(set_memory([engine], "resume", ["weights"]))
    stats = WeightSender().sync(iter(flat_head(tiny_model_dir)), [engine], "4",
                                SyncSettings("ipc", bucket_bytes=64 * 1024))
    assert stats.transport == "ipc" and stats.calls > 1
    asyncio.run(set_memory([engine], "resume", ["kv_cache", "cuda_graph"]))
    asyncio.run(check_versions([engine], "4"))
    out = asyncio.run(generate(engine))
    assert out.logprobs[0] == pytest.approx(uniform_logprob(tiny_model_dir), abs=1e-4)


def test_resume_without_a_push_leaves_zero_weights_not_the_old_ones(engine: str) -> None:
    """Released weight memory is gone (as in SGLang without a CPU backup): the push is what restores it."""

    async def norm() -> list[float]:
        async with WeightClient(engine) as client:
            return await client.get_weights_by_name("model.norm.weight", 3)

    assert asyncio.run(norm()) != [0.0, 0.0, 0.0]
    asyncio.run(set_memory([engine], "release", ["weights"]))
    asyncio.run(set_memory([engine], "resume", ["weights"]))
    assert asyncio.run(norm()) == [0.0, 0.0, 0.0]


def test_disk_transport_writes_under_the_shared_folder_and_keeps_one_version(
    engine: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    settings = SyncSettings("disk", disk_dir=str(shared), model_path=str(tiny_model_dir),
                            bucket_bytes=64 * 1024)
    sender = WeightSender()
    sender.sync(iter(flat_head(tiny_model_dir, 0.01)), [engine], "5", settings)
    stats = sender.sync(iter(flat_head(tiny_model_dir)), [engine], "6", settings)
    assert stats.transport == "disk" and stats.bytes > 0
    assert sorted(p.name for p in shared.iterdir()) == ["v6"]  # older versions are removed
    assert (shared / "v6" / "config.json").exists() and len(list((shared / "v6").glob("*.safetensors"))) > 1
    asyncio.run(check_versions([engine], "6"))
    out = asyncio.run(generate(engine))
    assert out.logprobs[0] == pytest.approx(uniform_logprob(tiny_model_dir), abs=1e-4)


def test_version_check_names_the_engine_that_did_not_update(engine: str) -> None:
    async def current() -> str | None:
        async with WeightClient(engine) as client:
            return await client.weight_version()

    now = asyncio.run(current())
    assert now is not None
    asyncio.run(check_versions([engine], now))
    with pytest.raises(WeightSyncError, match=engine.replace(".", r"\.") + f".*'{now}'"):
        asyncio.run(check_versions([engine], "not-" + now))
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(WeightSyncError, match="unreachable"):
        asyncio.run(check_versions([engine, dead], now))
