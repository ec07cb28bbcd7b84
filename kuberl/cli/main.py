"""The ``kuberl`` console command: one module per verb in ``kuberl.cli``, each exposing ``register``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from kuberl.errors import KuberlError, TrainingInterrupted

DESCRIPTION = """\
kuberl: RL post-training (GRPO and friends) of language models, as a Kubernetes RLTrainingJob or on
this machine. Typical use: `kuberl validate job.yaml`, `kuberl train job.yaml`, `kuberl plot runs/<job>`;
in a cluster, `kuberl operator` turns RLTrainingJobs into KubeRay RayJobs (docs/walkthrough.md)."""

# Verb modules, in help order. Each defines ``register(subparsers)`` and sets ``func`` on its parser.
COMMANDS = ("validate", "crd", "render", "train", "convert", "plot", "operator", "dev")


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every verb registered."""
    parser = argparse.ArgumentParser(prog="kuberl", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"kuberl.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; user errors print their message and exit 2, never a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return exc.exit_code
    except KuberlError as exc:
        if args.verbose:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"kuberl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
