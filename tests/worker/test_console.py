"""The run's console and log: header, summary, and a metrics log that holds each rollout once, in order."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from kuberl.api import parse_job
from kuberl.api.resolve import resolve
from kuberl.worker.console import (
    ResumePoint,
    already_complete,
    drop_rollouts_from,
    rollout_rows,
    startup_header,
    summary_table,
)

TINY = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples/tiny/job.yaml").read_text())


def _job():
    return parse_job(TINY)


def test_resumed_rollouts_replace_their_earlier_lines(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"rollout_id": i, "x": "killed"}) + "\n" for i in range(6))
                   + '{"rollout_id": 6, "x"')  # torn by a SIGKILL mid-write
    assert drop_rollouts_from(log, 4) == 3
    assert [json.loads(x)["rollout_id"] for x in log.read_text().splitlines()] == [0, 1, 2, 3]
    assert drop_rollouts_from(log, 4) == 0  # nothing left to drop: file untouched
    assert drop_rollouts_from(tmp_path / "absent.jsonl", 0) == 0


def test_rollout_rows_never_go_back_in_time_and_merge_the_final_eval() -> None:
    rows = [{"rollout_id": i, "r": 0.1 * i} for i in range(6)]  # a run killed after rollout 5
    rows += [{"rollout_id": i, "r": 1.0 + i} for i in range(4, 8)]  # resumed at 4 (old format)
    rows += [{"rollout_id": 7, "eval/score": 0.9}]  # the final evaluation's line
    merged = rollout_rows(rows)
    assert [r["rollout_id"] for r in merged] == list(range(8))
    assert [r["r"] for r in merged][4:] == [5.0, 6.0, 7.0, 8.0]  # the redone values
    assert merged[-1]["eval/score"] == 0.9 and merged[-1]["r"] == 8.0


def test_already_complete_only_at_num_rollout() -> None:
    job = _job()
    total = job.spec.rollout.num_rollout
    assert already_complete(job, ResumePoint(None, None)) is None
    assert already_complete(job, ResumePoint(total - 2, Path("c"))) is None
    message = already_complete(job, ResumePoint(total - 1, Path("ckpt/rollout_000249")))
    assert message is not None and f"already complete ({total}/{total})" in message
    assert "--restart" in message and "spec.rollout.numRollout" in message


def test_header_says_fresh_or_resumed_with_checkpoint_interval_engines_and_device() -> None:
    job = _job()
    config = resolve(job, in_cluster=False)
    fresh = startup_header(job, config, Path("runs/tiny-grpo"), ResumePoint(None, None), 250)
    assert "tiny-grpo" in fresh and "fresh start (rollout 0/250)" in fresh
    assert "every 50 rollouts" in fresh and "1 x embedded" in fresh and "cpu" in fresh
    resumed = startup_header(job, config, Path("r"), ResumePoint(49, Path("c/rollout_000049")), 250)
    assert "resuming at rollout 50/250 from c/rollout_000049" in resumed


def test_summary_table_shows_reward_from_first_to_last_and_where_things_are() -> None:
    history = [{"progress/rollout_id": float(i), "progress/num_rollout": 10.0,
                "rollout/reward_mean": 0.1 * i, "time/step_s": 0.5} for i in range(5, 10)]
    history[-1]["eval/score"] = 0.95
    table = summary_table(history, Path("runs/x"), "ck/rollout_000009", 12.0)
    assert "5 this run (5..9), now at 10/10" in table
    assert "0.500 -> 0.900 (best 0.900)" in table and "0.950 -> 0.950" in table
    assert "0.50 s per rollout" in table and "ck/rollout_000009" in table
    assert "kuberl plot runs/x" in table
    assert "no rollout ran" in summary_table([], Path("r"), None, 0.0)
