"""``kuberl plot RUN_DIR``: draw reward and other curves of a run to PNG."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("plot", help="draw a run's curves to PNG")
    parser.add_argument("run_dir", type=Path, help="run directory (holds metrics.jsonl)")
    parser.add_argument("-o", "--out", type=Path, default=None, help="output PNG path")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kuberl.worker.plot import plot_run

    print(plot_run(args.run_dir, args.out))
    return 0
