"""`kuberl train` checks what it can before anything slow starts, and `--restart` keeps the old run."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from kuberl.api import parse_job
from kuberl.cli.train import local_file_problems, move_aside

ROOT = Path(__file__).resolve().parents[2]
TINY = yaml.safe_load((ROOT / "examples/tiny/job.yaml").read_text())


def test_missing_local_files_are_named_with_their_spec_fields(tmp_path: Path) -> None:
    problems = local_file_problems(parse_job(TINY), base=tmp_path)
    fields = [p.split(":")[0] for p in problems]
    assert fields == ["spec.rollout.promptData", "spec.eval.datasets[0].path", "spec.model.hfCheckpoint",
                      "hint"]
    assert "python examples/tiny/prepare.py" in problems[-1]


def test_present_files_and_hub_ids_pass(tmp_path: Path) -> None:
    for rel in ("examples/tiny/build/train.jsonl", "examples/tiny/build/eval.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    (tmp_path / "examples/tiny/build/model").mkdir()
    (tmp_path / "examples/tiny/build/model/config.json").write_text("{}")
    assert local_file_problems(parse_job(TINY), base=tmp_path) == []
    hub = {**TINY, "spec": {**TINY["spec"], "model": {"hfCheckpoint": "HuggingFaceTB/SmolLM2-135M"}}}
    assert local_file_problems(parse_job(hub), base=tmp_path) == []


def test_move_aside_renames_with_a_time_suffix(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "metrics.jsonl").write_text("x\n")
    moved = move_aside([tmp_path / "checkpoints", tmp_path / "metrics.jsonl", tmp_path / "absent"],
                       datetime(2026, 11, 28, 10, 0, tzinfo=UTC))
    assert [m.name for m in moved] == ["checkpoints.replaced-20261128T100000Z",
                                       "metrics.jsonl.replaced-20261128T100000Z"]
    assert not (tmp_path / "checkpoints").exists()


def test_a_missing_data_file_fails_in_seconds_with_the_field(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(TINY))
    started = time.monotonic()
    proc = subprocess.run([str(Path(sys.executable).parent / "kuberl"), "train", str(job)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "spec.rollout.promptData: file 'examples/tiny/build/train.jsonl' not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert time.monotonic() - started < 20  # no torch, no Ray: only the spec is read
