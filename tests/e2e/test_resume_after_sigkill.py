"""A run killed with SIGKILL between checkpoints resumes from the last complete checkpoint.

Invariants: no prompt is skipped and none is trained twice beyond what the checkpoint implies (the
rollouts after the checkpoint are redone with exactly the same prompts), the data cursor, weight version
and buffer come back, and a half-written checkpoint is ignored. With dynamic sampling and partial rollout
on, the run is killed while the checkpoint's buffer holds groups, and the resumed driver's buffer,
optimizer state and policy (logprobs of a fixed batch) are compared with the checkpoint files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch
from transformers import AutoConfig

from kuberl.api import load_jobs
from kuberl.api.resolve import resolve
from kuberl.worker import checkpoint as ckpt
from kuberl.worker.data.cursor import PromptCursor
from kuberl.worker.driver import (
    Driver,
    DriverOptions,
    _child_processes,
    _children_since,
    _stop_local_ray,
)
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig
from tests.e2e.conftest import kuberl_cmd, tiny_job

pytestmark = pytest.mark.slow

BATCH = 8


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate, timeout_s: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited early with {proc.returncode}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the run")


def test_sigkill_between_checkpoints_resumes_without_skipping_or_repeating(
    easy_tiny_build: Path, tmp_path: Path
) -> None:
    ckpt_root = tmp_path / "checkpoints"
    job = tiny_job(
        easy_tiny_build, tmp_path,
        rollout={"numRollout": 6, "batchSize": BATCH, "shuffle": True, "seed": 7},
        eval={"interval": None, "datasets": []},
        checkpoint={"save": str(ckpt_root), "saveInterval": 2},
    )
    run_dir = tmp_path / "run"
    cmd = kuberl_cmd("train", str(job), "--run-dir", str(run_dir), "--no-progress")
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    samples_log = run_dir / "samples.jsonl"
    try:
        # Rollout 3's checkpoint is complete and rollout 4 has trained: kill between checkpoints.
        wait_for(lambda: (ckpt_root / "rollout_000003").is_dir() and samples_log.exists()
                 and any(r["rollout_id"] == 4 for r in read_jsonl(samples_log)), 600, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # A half-written checkpoint left by a crash must be ignored on resume.
    (ckpt_root / ".tmp-rollout_000005").mkdir()
    killed = read_jsonl(samples_log)

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-4000:]
    records = read_jsonl(samples_log)[len(killed):]
    assert [r["rollout_id"] for r in records] == [4, 5], "resume starts after checkpoint 3"

    order = PromptCursor(2000, shuffle=True, seed=7).order(0)
    by_rollout: dict[int, list[int]] = {}
    for r in killed + records:
        by_rollout[r["rollout_id"]] = r["rows"]  # the redo of rollout 4 replaces the killed one
    for rollout_id in range(6):
        expected = order[rollout_id * BATCH:(rollout_id + 1) * BATCH]
        assert sorted(by_rollout[rollout_id]) == sorted(expected), rollout_id
    redone = [r for r in killed if r["rollout_id"] == 4]
    assert sorted(redone[0]["rows"]) == sorted(by_rollout[4])
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    versions = [m["progress/weight_version"] for m in metrics if "progress/weight_version" in m]
    assert versions[-2:] == [5.0, 6.0]  # the version continues from the checkpoint's
    assert (ckpt_root / "rollout_000005").is_dir()


# ---- dynamic sampling + partial rollout: the buffer, the optimizer and the policy come back exactly ----

OVER_SAMPLING = 16
NUM_ROLLOUT = 9
SAVE_INTERVAL = 3  # checkpoints after rollouts 2, 5 and 8


def same_state(a: object, b: object, where: str = "optimizer") -> None:
    """Recursive equality of saved states: tensors bit for bit, everything else with ``==``."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (where, sorted(a), sorted(b))
        for key in a:
            same_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def fixed_batch(vocab: int) -> list[TrainSample]:
    """Four fixed sequences: their logprobs fingerprint the policy weights."""
    g = torch.Generator().manual_seed(3)
    out = []
    for n in (9, 12, 7, 10):
        tokens = torch.randint(3, vocab, (n,), generator=g).tolist()
        out.append(TrainSample(tokens=tokens, prompt_len=4, advantages=[0.0] * (n - 4),
                               loss_mask=[1] * (n - 4)))
    return out


def backend_logprobs(config: TorchBackendConfig, model_dir: Path, batch: list[TrainSample]) -> list[list[float]]:
    """The run's own backend configuration, loading ``model_dir``: the policy as a checkpoint holds it."""
    trainer = TorchBackend(dataclasses.replace(config, hf_checkpoint=str(model_dir), ref_load=None))
    return trainer.compute_logprobs(batch)


def newest_with_buffer(root: Path, samples_log: Path) -> ckpt.Checkpoint | None:
    """The newest complete checkpoint if its buffer holds samples and a later rollout has started."""
    found = ckpt.latest_checkpoint(root)
    if found is None or not samples_log.exists():
        return None
    if not found.driver_state()["buffer"]:
        return None
    return found if any(r["rollout_id"] > found.rollout_id for r in read_jsonl(samples_log)) else None


def test_sigkill_with_dynamic_sampling_and_partial_rollout_restores_buffer_optimizer_and_policy(
    easy_tiny_build: Path, tmp_path: Path
) -> None:
    ckpt_root = tmp_path / "checkpoints"
    job = tiny_job(
        easy_tiny_build, tmp_path,
        rollout={"numRollout": NUM_ROLLOUT, "batchSize": BATCH, "overSamplingBatchSize": OVER_SAMPLING,
                 "dynamicSamplingFilterPath": "kuberl.worker.rollout.filters:check_reward_nonzero_std",
                 "partialRollout": True, "shuffle": True, "seed": 7},
        eval={"interval": None, "datasets": []},
        checkpoint={"save": str(ckpt_root), "saveInterval": SAVE_INTERVAL},
    )
    run_dir = tmp_path / "run"
    samples_log = run_dir / "samples.jsonl"
    first = subprocess.Popen(kuberl_cmd("train", str(job), "--run-dir", str(run_dir), "--no-progress"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # Kill between checkpoints, once the newest one holds buffered groups (read from its files).
        wait_for(lambda: newest_with_buffer(ckpt_root, samples_log) is not None, 900, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    saved = ckpt.latest_checkpoint(ckpt_root)
    assert saved is not None and saved.rollout_id < NUM_ROLLOUT - 1, "killed before the run's end"
    state = saved.driver_state()
    assert state["buffer"], "the checkpoint the run resumes from holds buffered groups"
    saved_optim = torch.load(saved.trainer_dir / "optimizer.pt", weights_only=False)
    killed = read_jsonl(samples_log)

    [spec] = load_jobs(job)
    config = TorchBackendConfig.from_worker_config(resolve(spec, in_cluster=False))
    batch = fixed_batch(AutoConfig.from_pretrained(easy_tiny_build / "model").vocab_size)
    before_kill = backend_logprobs(config, saved.trainer_dir / "model", batch)
    initial = backend_logprobs(config, easy_tiny_build / "model", batch)
    moved = max(abs(a - b) for x, y in zip(before_kill, initial, strict=True) for a, b in zip(x, y, strict=True))
    assert moved > 1e-4, "the checkpointed policy differs from the initial one (the check can fail)"

    # Resume in this process through the driver's own start-up, so its state can be read back.
    # The caller's own children (a test session's control planes) must survive the driver's clean-up.
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)
    before = _child_processes()
    driver = Driver(spec, DriverOptions(run_dir=run_dir, progress_bar=False))
    try:
        driver.start()
        assert driver.start_rollout == saved.rollout_id + 1
        # (a) the partial-rollout buffer (aborted and late groups, partial tokens and all)
        assert driver.buffer.state_dict() == state["buffer"]
        assert driver.prompts.state_dict() == state["data"]
        # (b) the optimizer state, tensor by tensor, read back through the trainer's own save
        driver.trainer.save(str(tmp_path / "resumed"))
        same_state(torch.load(tmp_path / "resumed" / "optimizer.pt", weights_only=False), saved_optim)
        # (c) the policy: a fixed batch's logprobs equal those computed from the checkpoint files
        after_resume = driver.trainer.compute_logprobs(batch)
        for a, b in zip(after_resume, before_kill, strict=True):
            assert a == pytest.approx(b, abs=1e-6, rel=0)
        driver.run()
    finally:
        children = _children_since(before)  # Ray's processes, the grading pool
        driver.stop()
        _stop_local_ray(children)
        survived = bystander.poll() is None
        bystander.kill()
        bystander.wait()
    assert survived, "the clean-up killed a process the caller had started before the run"
    assert not [p for p in children if _alive(p)]

    # (d) the audit: every rollout once, no sample trained twice, the buffer's groups carried over.
    records = read_jsonl(samples_log)[len(killed):]
    assert [r["rollout_id"] for r in records] == list(range(saved.rollout_id + 1, NUM_ROLLOUT))
    kept = [r for r in killed if r["rollout_id"] <= saved.rollout_id]
    assert [r["rollout_id"] for r in kept] == list(range(saved.rollout_id + 1)), "killed run: each rollout once"
    trained = [i for r in kept + records for i in r["samples"]]
    assert len(trained) == len(set(trained)), "a sample was trained twice"
    buffered = {s["index"] for g in state["buffer"] for s in g}
    assert not buffered & {i for r in kept for i in r["samples"]}, "buffered samples were not trained yet"
    fresh_from = state["data"]["next_sample_index"]
    resumed_samples = {i for r in records for i in r["samples"]}
    assert all(i >= fresh_from or i in buffered for i in resumed_samples), (
        "the resumed run drew no prompt the checkpoint had already handed out, except buffered ones")
    assert resumed_samples & buffered, "the resumed run continued the checkpointed buffer's groups"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    assert sum(m.get("dynamic_sampling/groups_dropped", 0) for m in metrics) > 0, "the filter dropped groups"
    assert [m["progress/weight_version"] for m in metrics if "progress/weight_version" in m][-1] == NUM_ROLLOUT
