"""``kuberl crd``: print the RLTrainingJob CRD generated from the models (``--write`` updates crds/)."""

from __future__ import annotations

import argparse
import sys

from kuberl.api.crd import render_crd_yaml, write_crds


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crd", help="print the RLTrainingJob CustomResourceDefinition")
    parser.add_argument("--write", action="store_true", help="rewrite crds/ and the chart's copy")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.write:
        for path in write_crds():
            print(f"wrote {path}", file=sys.stderr)
        return 0
    sys.stdout.write(render_crd_yaml())
    return 0
