"""``kuberl train FILE.yaml``: run an RLTrainingJob on this machine (torch trainer, embedded engines)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kuberl.api import load_jobs
from kuberl.errors import SpecError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="run an RLTrainingJob locally")
    parser.add_argument("file", help="YAML file with one RLTrainingJob")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where logs and metrics.jsonl go (default runs/<job name>)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port (0: any free port)")
    parser.add_argument("--max-rollouts", type=int, default=None,
                        help="stop after this many rollouts (smoke runs)")
    parser.add_argument("--no-progress", action="store_true", help="no console progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    jobs = load_jobs(args.file)
    if len(jobs) != 1:
        raise SpecError([f"expected one RLTrainingJob, found {len(jobs)}"], args.file)
    job = jobs[0]
    from kuberl.worker.driver import DriverOptions, run_job

    options = DriverOptions(
        in_cluster=False,
        run_dir=args.run_dir or Path("runs") / job.metadata.name,
        metrics_port=args.metrics_port,
        progress_bar=not args.no_progress,
        max_rollouts=args.max_rollouts,
    )
    history = run_job(job, options)
    if history:
        first, last = history[0], history[-1]
        summary = {
            "rollouts": len(history),
            "first_reward": round(first.get("rollout/reward_mean", 0.0), 4),
            "last_reward": round(last.get("rollout/reward_mean", 0.0), 4),
            "last_eval": last.get("eval/score"),
            "run_dir": str(options.run_dir),
        }
        print(json.dumps(summary), file=sys.stdout)
    return 0
