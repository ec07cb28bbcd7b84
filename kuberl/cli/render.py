"""``kuberl render FILE``: print the Kubernetes objects the operator would create for each job."""

from __future__ import annotations

import argparse
import os
import sys

import yaml

from kuberl.api import load_jobs
from kuberl.operator.render import DEFAULT_WORKER_IMAGE, RenderSettings, render_children


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "render", help="print the ConfigMap, RBAC and KubeRay RayJob an RLTrainingJob becomes"
    )
    parser.add_argument("file", help="YAML file holding RLTrainingJob documents")
    parser.add_argument("-n", "--namespace", default=None,
                        help="namespace to render into (default: the manifest's, else none)")
    parser.add_argument(
        "--worker-image", default=os.environ.get("KUBERL_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
        help="image for jobs without spec.cluster.image",
    )
    parser.add_argument("--rayjob-only", action="store_true", help="print only the RayJob")
    parser.set_defaults(func=run)


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the ConfigMap's YAML files) print as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def run(args: argparse.Namespace) -> int:
    """Print the children as one multi-document YAML stream (invalid manifests raise SpecError)."""
    settings = RenderSettings(default_image=args.worker_image)
    docs = []
    for job in load_jobs(args.file):
        if args.namespace:
            job = job.model_copy(
                update={"metadata": job.metadata.model_copy(update={"namespace": args.namespace})}
            )
        children = render_children(job, settings)
        docs += [children.rayjob] if args.rayjob_only else children.in_apply_order()
    yaml.dump_all(docs, sys.stdout, Dumper=_BlockDumper, sort_keys=False)
    return 0
