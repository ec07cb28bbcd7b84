"""``kuberl train FILE.yaml``: run an RLTrainingJob on this machine (torch trainer, embedded engines)."""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from kuberl.api import load_jobs
from kuberl.api.job import RLTrainingJob
from kuberl.errors import SpecError

# ``org/name`` as the Hugging Face hub spells a model; a path that does not exist but looks like this is
# left to the loader (it may be in the local hub cache).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="run an RLTrainingJob locally",
        description="Run an RLTrainingJob on this machine. A rerun resumes from the newest checkpoint "
                    "under spec.checkpoint.save; Ctrl-C stops cleanly and says how to resume.")
    parser.add_argument("file", help="YAML file with one RLTrainingJob")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where logs and metrics.jsonl go (default runs/<job name>)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (0: any free port)")
    parser.add_argument("--max-rollouts", type=int, default=None,
                        help="stop after this many rollouts (smoke runs)")
    parser.add_argument("--no-progress", action="store_true", help="no console progress bar")
    parser.add_argument("--restart", action="store_true",
                        help="start from rollout 0: move the old checkpoints and metrics aside "
                             "(renamed with a .replaced-<time> suffix) instead of resuming")
    parser.set_defaults(func=run)


def local_file_problems(job: RLTrainingJob, base: Path | None = None) -> list[str]:
    """The spec's local files that do not exist, one 'spec.field: problem. fix' line each.

    Checked before anything slow starts, so a typo costs a second, not the minute of imports and start-up.
    """
    base = base or Path.cwd()
    spec = job.spec
    wanted: list[tuple[str, str]] = [("spec.rollout.promptData", spec.rollout.prompt_data)]
    wanted += [(f"spec.eval.datasets[{i}].path", d.path) for i, d in enumerate(spec.eval.datasets)]
    problems = []
    for field, value in wanted:
        if not (base / value).exists():
            problems.append(f"{field}: file {value!r} not found (relative paths start at {base})")
    model = spec.model.hf_checkpoint
    if not (base / model).exists() and not HUB_ID.match(model):
        problems.append(f"spec.model.hfCheckpoint: directory {model!r} not found (relative paths start "
                        f"at {base})")
    elif (base / model).is_dir() and not (base / model / "config.json").exists():
        problems.append(f"spec.model.hfCheckpoint: {model!r} holds no config.json; point it at a "
                        "Hugging Face model directory")
    if problems and any("examples/tiny/build" in p for p in problems):
        problems.append("hint: build the tiny example first with `python examples/tiny/prepare.py`")
    return problems


def move_aside(paths: list[Path], now: datetime) -> list[Path]:
    """Rename each existing path to ``<name>.replaced-<UTC time>``; return the new names."""
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    moved = []
    for path in paths:
        if path.exists():
            target = path.with_name(f"{path.name}.replaced-{stamp}")
            shutil.move(str(path), target)
            moved.append(target)
    return moved


def run(args: argparse.Namespace) -> int:
    jobs = load_jobs(args.file)
    if len(jobs) != 1:
        raise SpecError([f"expected one RLTrainingJob, found {len(jobs)}"], args.file)
    job = jobs[0]
    problems = local_file_problems(job)
    if problems:
        raise SpecError(problems, args.file)
    run_dir = args.run_dir or Path("runs") / job.metadata.name
    if args.restart:
        old = [run_dir / "metrics.jsonl", run_dir / "samples.jsonl", run_dir / "summary.json"]
        if job.spec.checkpoint.save:
            old.append(Path(job.spec.checkpoint.save))
        for moved in move_aside(old, datetime.now(UTC)):
            print(f"--restart: moved {moved.name.split('.replaced-')[0]} aside to {moved}",
                  file=sys.stderr)
    elif args.max_rollouts is None:
        # Answer "nothing to do" before importing torch or starting Ray.
        from kuberl.api.resolve import resolve
        from kuberl.worker.console import already_complete, resume_point

        finished = already_complete(job, resume_point(resolve(job, in_cluster=False)))
        if finished:
            print(finished, file=sys.stderr)
            return 0
    from kuberl.worker.driver import DriverOptions, run_job

    options = DriverOptions(
        in_cluster=False,
        run_dir=run_dir,
        metrics_port=args.metrics_port,
        progress_bar=not args.no_progress,
        max_rollouts=args.max_rollouts,
    )
    run_job(job, options)
    return 0
