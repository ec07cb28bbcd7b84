"""The main job, short form: `kuberl train` on the tiny example learns (reward rises well above chance)."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import kuberl_cmd, tiny_job

pytestmark = pytest.mark.slow


def test_kuberl_train_raises_reward_on_the_tiny_task(easy_tiny_build: Path, tmp_path: Path) -> None:
    job = tiny_job(
        easy_tiny_build, tmp_path,
        rollout={"numRollout": 30, "batchSize": 16},
        eval={"interval": 15},
        optimizer={"lr": 3.0e-3, "adamBeta2": 0.98, "weightDecay": 0.0},
        checkpoint={"saveInterval": 15, "save": str(tmp_path / "checkpoints")},
    )
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        kuberl_cmd("train", str(job), "--run-dir", str(run_dir), "--no-progress"),
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["rollout/reward_mean"] for r in rows if "rollout/reward_mean" in r]
    assert len(rewards) == 30
    first, last = statistics.fmean(rewards[:5]), statistics.fmean(rewards[-5:])
    # Chance is about 0.06 (the random model spreads over ~22 tokens); the mean of five rollouts of
    # 128 samples moves by ~0.01 from noise, so a rise of 0.15 is learning (typically 0.25+ here).
    assert last > first + 0.15, rewards
    weight_versions = [r["progress/weight_version"] for r in rows if "progress/weight_version" in r]
    assert weight_versions == list(range(1, 31))
    for key in ("train/clip_fraction", "train/entropy", "train/grad_norm", "train/logprob_diff",
                "time/weight_sync_s", "perf/rollout_tokens_per_s"):
        assert key in rows[-2], key
    # The engine's logprobs match the trainer's (same weights, same numerics on CPU).
    assert max(r["train/logprob_diff"] for r in rows if "train/logprob_diff" in r) < 1e-3
    assert any("eval/score" in r for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["rollouts"] == 30
    # Where start-up went, stage by stage (the TRL race compares start-up; users ask why it is slow).
    assert list(summary["startup_s"]) == ["ray", "engines", "trainer", "router_and_resume"]
    assert all(v >= 0 for v in summary["startup_s"].values()) and summary["startup_s"]["engines"] > 0
    assert "reward" in proc.stdout and "kuberl plot" in proc.stdout  # the final table
    assert "fresh start (rollout 0/30)" in proc.stderr  # the start-up header
    assert (tmp_path / "checkpoints" / "rollout_000029").is_dir()
