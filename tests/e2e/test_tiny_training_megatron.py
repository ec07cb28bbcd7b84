"""`kuberl train` with `spec.backends.trainer: megatron` on CPU (gloo, fp32): the real driver, the embedded
engine and the Megatron-core backend on the tiny task. The loop completes, weight versions advance, the
engine generates with the weights the Megatron backend exported (its logprobs match the trainer's), the
checkpoint is a Megatron dist checkpoint that `kuberl convert` turns into HF, and a second run resumes
from it."""

from __future__ import annotations

import json
import re
import statistics
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import kuberl_cmd, tiny_job

pytest.importorskip("megatron.core")
pytestmark = pytest.mark.slow

ROLLOUTS = 12


def run(job: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(kuberl_cmd("train", str(job), "--run-dir", str(run_dir), "--no-progress"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_grpo_with_the_megatron_trainer_on_cpu_trains_syncs_and_resumes(
    easy_tiny_build: Path, tmp_path: Path
) -> None:
    ckpt = tmp_path / "checkpoints"
    common = {"eval": {"interval": None, "datasets": []},
              "optimizer": {"lr": 3.0e-3, "adamBeta2": 0.98, "weightDecay": 0.0},
              "checkpoint": {"save": str(ckpt), "saveInterval": ROLLOUTS},
              "backends": {"trainer": "megatron", "rollout": "embedded", "device": "cpu"}}
    job = tiny_job(easy_tiny_build, tmp_path, rollout={"numRollout": ROLLOUTS, "batchSize": 16}, **common)
    proc = run(job, tmp_path / "run")
    assert re.search(r"trainer\s+megatron\n", proc.stderr) and re.search(r"device\s+cpu\n", proc.stderr)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["progress/weight_version"] for r in rows] == list(range(1, ROLLOUTS + 1))
    assert all(r["train/grad_norm"] > 0 for r in rows)
    # The engine samples with what the Megatron backend exported after each step: its logprobs of the
    # sampled tokens equal the trainer's (same function, fp32 on CPU) once the weights have moved.
    assert max(r["train/logprob_diff"] for r in rows) < 1e-3, [r["train/logprob_diff"] for r in rows]
    rewards = [r["rollout/reward_mean"] for r in rows]
    print("rewards", rewards)
    assert statistics.fmean(rewards[-4:]) > statistics.fmean(rewards[:4]), rewards
    trainer_dir = ckpt / f"rollout_{ROLLOUTS - 1:06d}" / "trainer"
    assert (trainer_dir / "metadata.json").is_file()  # megatron's dist checkpoint
    # `kuberl convert` turns the trainer's checkpoint into an HF checkpoint transformers loads, holding
    # the trained weights (not the initial ones).
    model = easy_tiny_build / "model"
    exported = tmp_path / "exported"
    conv = subprocess.run(kuberl_cmd("convert", "dist-to-hf", str(trainer_dir), str(exported),
                                     "--hf-config", str(model)), capture_output=True, text=True, timeout=300)
    assert conv.returncode == 0, conv.stderr[-3000:]
    from safetensors.torch import load_file

    trained, initial = load_file(str(exported / "model.safetensors")), load_file(str(model / "model.safetensors"))
    assert sorted(trained) == sorted(initial)
    assert any(not (trained[n] == initial[n]).all() for n in initial)

    more = tiny_job(easy_tiny_build, tmp_path, rollout={"numRollout": ROLLOUTS + 2, "batchSize": 16}, **common)
    proc = run(more, tmp_path / "run-resumed")
    assert "resumed from" in proc.stderr
    rows = [json.loads(line) for line in (tmp_path / "run-resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollout_id"] for r in rows] == [ROLLOUTS, ROLLOUTS + 1]
    assert [r["progress/weight_version"] for r in rows] == [ROLLOUTS + 1, ROLLOUTS + 2]
    assert max(r["train/logprob_diff"] for r in rows) < 1e-3
