"""`kuberl train` with two CPU trainer ranks (spec.backends.device: cpu reads actorNumGpusPerNode as CPU
ranks): the driver's multi-rank path trains, checkpoints, and a resume on ONE rank continues the run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import kuberl_cmd, tiny_job

pytestmark = pytest.mark.slow


def run(job: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(kuberl_cmd("train", str(job), "--run-dir", str(run_dir), "--no-progress"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_cpu_ranks_train_and_resume_on_one(easy_tiny_build: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoints"
    common = {"eval": {"interval": None, "datasets": []},
              "checkpoint": {"save": str(ckpt), "saveInterval": 2}}
    two = tiny_job(easy_tiny_build, tmp_path, rollout={"numRollout": 2, "batchSize": 8},
                   placement={"actorNumNodes": 1, "actorNumGpusPerNode": 2, "rolloutNumGpus": 1},
                   **common)
    proc = run(two, tmp_path / "run-2")
    assert "2 trainer rank(s) ready" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run-2" / "metrics.jsonl").read_text().splitlines()]
    assert [r["progress/weight_version"] for r in rows] == [1, 2]
    assert all(r["train/grad_norm"] > 0 for r in rows)
    assert (ckpt / "rollout_000001" / "trainer" / "model").is_dir()

    one = tiny_job(easy_tiny_build, tmp_path, rollout={"numRollout": 3, "batchSize": 8},
                   placement={"actorNumNodes": 1, "actorNumGpusPerNode": 1, "rolloutNumGpus": 1},
                   **common)
    proc = run(one, tmp_path / "run-1")
    assert "1 trainer rank(s) ready" in proc.stderr and "resumed from" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run-1" / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollout_id"] for r in rows] == [2] and rows[0]["progress/weight_version"] == 3
