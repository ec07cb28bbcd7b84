"""A run killed with SIGKILL between checkpoints resumes from the last complete checkpoint.

Invariants: no prompt is skipped and none is trained twice beyond what the checkpoint implies (the
rollouts after the checkpoint are redone with exactly the same prompts), the data cursor, weight version
and buffer come back, and a half-written checkpoint is ignored.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kuberl.worker.data.cursor import PromptCursor
from tests.e2e.conftest import kuberl_cmd, tiny_job

pytestmark = pytest.mark.slow

BATCH = 8


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
