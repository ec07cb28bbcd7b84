"""``kuberl operator``: run the RLTrainingJob operator against the current kubeconfig."""

from __future__ import annotations

import argparse
import os

from kuberl.operator.render import DEFAULT_WORKER_IMAGE


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "operator", help="run the operator (reconciles RLTrainingJobs into KubeRay RayJobs)"
    )
    parser.add_argument(
        "-n", "--namespace", action="append", default=[], dest="namespaces", metavar="NS",
        help="watch this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--metrics-port", type=int, default=8080,
                        help="port of the Prometheus /metrics endpoint (0: off; default 8080)")
    parser.add_argument("--metrics-addr", default="0.0.0.0", help="address to serve /metrics on")
    parser.add_argument(
        "--worker-image", default=os.environ.get("KUBERL_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
        help="image of jobs that set no spec.cluster.image (default: $KUBERL_WORKER_IMAGE or "
        f"{DEFAULT_WORKER_IMAGE})",
    )
    parser.add_argument(
        "--default-queue-name", default=os.environ.get("KUBERL_DEFAULT_QUEUE_NAME") or None,
        metavar="LOCALQUEUE",
        help="Kueue LocalQueue for jobs that name none in spec.cluster.queueName or the "
        "kueue.x-k8s.io/queue-name label (default: $KUBERL_DEFAULT_QUEUE_NAME; none: not queued)",
    )
    parser.add_argument(
        "--default-priority-class", default=os.environ.get("KUBERL_DEFAULT_PRIORITY_CLASS") or None,
        metavar="CLASS",
        help="Kueue WorkloadPriorityClass for queued jobs without the kueue.x-k8s.io/priority-class "
        "label (default: $KUBERL_DEFAULT_PRIORITY_CLASS)",
    )
    parser.add_argument("--resync-seconds", type=float, default=30.0,
                        help="how often each job's RayJob is re-read (default 30)")
    parser.add_argument("--kubeconfig", default=None,
                        help="kubeconfig file (default: in-cluster, else $KUBECONFIG or ~/.kube/config)")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve a liveness probe, e.g. http://0.0.0.0:8081/healthz")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kuberl.operator.run import run as run_operator
    from kuberl.operator.settings import OperatorConfig

    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or None
    if kubeconfig is None and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        default = os.path.expanduser("~/.kube/config")
        kubeconfig = default if os.path.exists(default) else None
    config = OperatorConfig(
        namespaces=tuple(args.namespaces),
        metrics_port=args.metrics_port,
        metrics_addr=args.metrics_addr,
        worker_image=args.worker_image,
        resync_seconds=args.resync_seconds,
        kubeconfig=kubeconfig,
        liveness_endpoint=args.liveness,
        default_queue_name=args.default_queue_name,
        default_priority_class=args.default_priority_class,
    )
    return run_operator(config)
