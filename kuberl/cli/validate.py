"""``kuberl validate FILE...``: the apiserver's schema and CEL rules, then the operator's admission rules."""

from __future__ import annotations

import argparse
import sys

from kuberl.api import load_jobs
from kuberl.api.admission import DEFAULT_GPUS_PER_NODE, Severity, admission_problems
from kuberl.errors import SpecError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate", help="validate RLTrainingJob manifests")
    parser.add_argument("files", nargs="+", help="YAML files holding RLTrainingJob documents")
    parser.add_argument("--gpus-per-node", type=int, default=DEFAULT_GPUS_PER_NODE,
                        help="GPUs per node of the target cluster (the operator's setting)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per problem (file: field: message) and per warning; exit 1 if any job is refused."""
    failed = False
    for path in args.files:
        try:
            jobs = load_jobs(path)
        except SpecError as exc:
            failed = True
            for problem in exc.problems:
                print(f"{path}: {problem}", file=sys.stderr)
            continue
        for job in jobs:
            problems = admission_problems(job, gpus_per_node=args.gpus_per_node)
            errors = [p for p in problems if p.severity is Severity.ERROR]
            for p in problems:
                label = "" if p.severity is Severity.ERROR else "warning: "
                print(f"{path}: {job.metadata.name}: {label}{p}", file=sys.stderr)
            if errors:
                failed = True
            else:
                print(f"{path}: {job.metadata.name}: valid")
    return 1 if failed else 0
