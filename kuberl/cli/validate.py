"""``kuberl validate FILE...``: check manifests with the same rules the apiserver's CEL enforces."""

from __future__ import annotations

import argparse
import sys

from kuberl.api import load_jobs
from kuberl.errors import SpecError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("validate", help="validate RLTrainingJob manifests")
    parser.add_argument("files", nargs="+", help="YAML files holding RLTrainingJob documents")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print one line per problem (file: field: message); exit 1 if any file is invalid."""
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
            print(f"{path}: {job.metadata.name}: valid")
    return 1 if failed else 0
