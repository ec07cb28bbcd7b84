"""What a run tells its user: the start-up header, the final summary, and a metrics log without repeats.

Pure functions of the job, the resolved config and the per-rollout metrics; the driver and ``kuberl train``
print them. ``metrics.jsonl`` is one line per rollout; a resumed run redoes the rollouts after its
checkpoint, so ``drop_rollouts_from`` removes the earlier lines for those, and ``rollout_rows`` reads any
log (including one written before that rule) as a series that never goes back in time.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberl.api.job import RLTrainingJob
from kuberl.api.resolve import WorkerConfig


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run would resume from (its rollout and path), or where a fresh run starts."""

    rollout_id: int | None  # last completed rollout in the checkpoint; None: fresh start
    path: Path | None

    @property
    def next_rollout(self) -> int:
        return 0 if self.rollout_id is None else self.rollout_id + 1


def resume_point(config: WorkerConfig) -> ResumePoint:
    """Where the driver will start: the newest checkpoint under ``spec.checkpoint.save``, else under
    ``spec.checkpoint.load`` (the same choice ``Driver._resume`` makes), read from directory names only."""
    from kuberl.worker import checkpoint as ckpt

    for root in (config.save, config.load):
        found = ckpt.latest_checkpoint(Path(root)) if root else None
        if found is not None:
            return ResumePoint(found.rollout_id, found.path)
    return ResumePoint(None, None)


def already_complete(job: RLTrainingJob, point: ResumePoint) -> str | None:
    """The message for a run with nothing left to do (its checkpoint is at numRollout), else None."""
    total = job.spec.rollout.num_rollout
    if total is None or point.rollout_id is None or point.next_rollout < total:
        return None
    return (f"{job.metadata.name}: already complete ({point.next_rollout}/{total}); last checkpoint "
            f"{point.path}. To train again: `kuberl train ... --restart` (moves the old checkpoints "
            "aside), or raise spec.rollout.numRollout, or set a new spec.checkpoint.save")


def startup_header(job: RLTrainingJob, config: WorkerConfig, run_dir: Path, point: ResumePoint,
                   end: int | None) -> str:
    """The lines printed before anything slow starts: what runs, where, from where, on what."""
    total = "?" if end is None else str(end)
    if point.rollout_id is None:
        start = f"fresh start (rollout 0/{total})"
    else:
        start = f"resuming at rollout {point.next_rollout}/{total} from {point.path}"
    if config.save and config.save_interval:
        ckpt = f"every {config.save_interval} rollouts and at the end, to {config.save}"
    else:
        ckpt = "off (set spec.checkpoint.save and saveInterval to resume after a stop)"
    rows = [
        ("job", job.metadata.name),
        ("run dir", str(run_dir)),
        ("start", start),
        ("checkpoints", ckpt),
        ("engines", f"{config.num_engines} x {config.rollout_engine} "
                    f"({config.gpus_per_engine} GPU each)" if config.device != "cpu"
         else f"{config.num_engines} x {config.rollout_engine}"),
        ("trainer", config.trainer_backend),
        ("device", config.device),
        ("batch", f"{config.rollout_batch_size} prompts x {config.n_samples_per_prompt} samples"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(history: Sequence[dict[str, float]], run_dir: Path, last_checkpoint: str | None,
                  wall_s: float) -> str:
    """The final table: rollouts run, reward and eval from first to last, time per rollout, where things are."""
    if not history:
        return f"  no rollout ran; run dir {run_dir}"
    rewards = [r["rollout/reward_mean"] for r in history if "rollout/reward_mean" in r]
    evals = [r["eval/score"] for r in history if "eval/score" in r]
    steps = [r["time/step_s"] for r in history if "time/step_s" in r]
    ids = [int(r["progress/rollout_id"]) for r in history if "progress/rollout_id" in r]
    total = history[-1].get("progress/num_rollout")
    done = f"{ids[0]}..{ids[-1]}" if ids else str(len(history))
    rows = [
        ("rollouts", f"{len(history)} this run ({done}), now at {ids[-1] + 1 if ids else '?'}/"
                     f"{int(total) if total is not None else '?'}"),
        ("reward", f"{_fmt(rewards[0] if rewards else None)} -> "
                   f"{_fmt(rewards[-1] if rewards else None)} (best {_fmt(max(rewards, default=None))})"),
        ("eval", f"{_fmt(evals[0] if evals else None)} -> {_fmt(evals[-1] if evals else None)}"),
        ("time", f"{wall_s:.0f} s wall, {_fmt(statistics.median(steps) if steps else None, 2)} s per "
                 f"rollout (median) on {os.cpu_count()} CPU cores"),
        ("checkpoint", last_checkpoint or "none saved"),
        ("metrics", str(run_dir / "metrics.jsonl")),
        ("plot", f"kuberl plot {run_dir}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def summary_record(history: Sequence[dict[str, float]], run_dir: Path) -> dict[str, Any]:
    """The machine-readable summary (``<run_dir>/summary.json``)."""
    rewards = [r["rollout/reward_mean"] for r in history if "rollout/reward_mean" in r]
    evals = [r["eval/score"] for r in history if "eval/score" in r]
    return {
        "rollouts": len(history),
        "first_reward": round(rewards[0], 4) if rewards else None,
        "last_reward": round(rewards[-1], 4) if rewards else None,
        "last_eval": evals[-1] if evals else None,
        "run_dir": str(run_dir),
    }


def rollout_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One merged row per rollout, in rollout order, as the last run wrote them.

    Lines of one rollout merge (the final evaluation adds a second line); a line whose rollout is not
    after the previous line's starts a redo: every later rollout written before it is dropped.
    """
    merged: dict[int, dict[str, Any]] = {}
    last = -1
    for row in rows:
        rid = row.get("rollout_id")
        if not isinstance(rid, int):
            continue
        if rid < last:
            for stale in [k for k in merged if k >= rid]:
                del merged[stale]
        merged.setdefault(rid, {}).update(row)
        last = rid
    return [merged[k] for k in sorted(merged)]


def drop_rollouts_from(path: Path, start: int) -> int:
    """Remove the lines of rollouts >= ``start`` from a metrics log (a resumed run redoes them); return
    how many lines went. Written to a temporary file and renamed, so a crash leaves either version."""
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            rid = json.loads(line).get("rollout_id")
        except ValueError:
            continue  # a torn last line from a killed run
        if not (isinstance(rid, int) and rid >= start):
            kept.append(line)
    if len(kept) == len(lines):
        return 0
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    tmp.replace(path)
    return len(lines) - len(kept)
