"""``kuberl dev cluster up|down|env|status|build``: a real local control plane (etcd,
kube-apiserver, controller manager, scheduler, kwok with fake H100 nodes) for trying the operator
without a cloud cluster."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from kuberl.errors import ClusterError


def default_dir() -> Path:
    """Where ``up`` keeps the cluster (and ``down``/``env`` look for it): ``KUBERL_DEVCLUSTER_DIR``
    or a per-user folder under the temporary directory."""
    return Path(os.environ.get("KUBERL_DEVCLUSTER_DIR") or f"/tmp/kuberl-devcluster-{os.getuid()}")


def register(subparsers: argparse._SubParsersAction) -> None:
    dev = subparsers.add_parser("dev", help="developer tools (a local control plane)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    cluster = dev_sub.add_parser("cluster", help="start, stop or inspect the local control plane")
    actions = cluster.add_subparsers(dest="cluster_command", required=True)

    up = actions.add_parser("up", help="start it; prints the kubeconfig path")
    up.add_argument("--nodes", type=int, default=2, help="fake 8×H100 nodes to create (default 2)")
    up.add_argument("--kuberay-operator", action="store_true",
                    help="also run the KubeRay operator (watching namespace kuberay-system)")
    up.add_argument("--kueue", action="store_true",
                    help="also install Kueue's CRDs and run its controller manager (RayJob "
                         "integration; webhooks on loopback)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness")
    up.set_defaults(func=run_up)

    down = actions.add_parser("down", help="stop every component and remove the cluster directory")
    down.set_defaults(func=run_down)

    env = actions.add_parser("env", help="print `export KUBECONFIG=... PATH=<binaries>:$PATH` for eval")
    env.set_defaults(func=run_env)

    status = actions.add_parser("status", help="list the components and whether they run")
    status.set_defaults(func=run_status)

    build = actions.add_parser("build",
                               help="build or reuse the pinned binaries (hack/cluster/build.sh)")
    build.set_defaults(func=run_build)

    play = dev_sub.add_parser(
        "kuberay", help="play KubeRay's part for one RayJob on the dev cluster (Ray cannot run on its "
                        "fake nodes): create its Ray pods, then report the cluster ready and the driver "
                        "RUNNING")
    play.add_argument("rayjob", help="RayJob name (the RLTrainingJob's name)")
    play.add_argument("-n", "--namespace", default="default")
    play.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the pods")
    play.add_argument("--dir", type=Path, default=None, help="cluster directory (as for `cluster`)")
    play.set_defaults(func=run_kuberay)

    for parser in (up, down, env, status):
        parser.add_argument("--dir", type=Path, default=None,
                            help="cluster directory (default $KUBERL_DEVCLUSTER_DIR or "
                                 "/tmp/kuberl-devcluster-<uid>)")


def run_up(args: argparse.Namespace) -> int:
    from kuberl.devcluster import start_cluster

    directory = args.dir or default_dir()
    started = time.monotonic()
    cluster = start_cluster(directory, nodes=args.nodes, kuberay_operator=args.kuberay_operator,
                            kueue_manager=args.kueue, timeout=args.timeout, remove_on_stop=True)
    print(f"cluster ready in {time.monotonic() - started:.1f} s; logs in {directory / 'logs'}; "
          f"stop with `kuberl dev cluster down`", file=sys.stderr)
    print(cluster.kubeconfig)
    return 0


def run_down(args: argparse.Namespace) -> int:
    from kuberl.devcluster import stop_cluster

    stop_cluster(args.dir or default_dir())
    return 0


def run_env(args: argparse.Namespace) -> int:
    from kuberl.devcluster import ClusterState

    state = ClusterState.load(args.dir or default_dir())
    print(f"export KUBECONFIG={state.kubeconfig}")
    # kubectl (and the other pinned binaries) live in the build cache, not on PATH.
    print(f'export PATH="{state.bin_dir}:$PATH"')
    return 0


def run_status(args: argparse.Namespace) -> int:
    from kuberl.devcluster import ClusterState
    from kuberl.devcluster.processes import is_running

    state = ClusterState.load(args.dir or default_dir())
    print(f"server {state.server}  kubeconfig {state.kubeconfig}")
    for rec in state.processes:
        running = "running" if is_running(rec) else "STOPPED"
        print(f"{rec.name:<24} pid {rec.pid:<8} {running}  {rec.log}")
    return 0 if all(is_running(r) for r in state.processes) else 1


def run_build(args: argparse.Namespace) -> int:
    from kuberl.devcluster.binaries import BUILD_SCRIPT

    if not BUILD_SCRIPT.exists():
        raise ClusterError(f"{BUILD_SCRIPT} not found: `kuberl dev cluster build` needs a source "
                           "checkout")
    return subprocess.run(["bash", str(BUILD_SCRIPT)], check=False).returncode


def run_kuberay(args: argparse.Namespace) -> int:
    from kuberl.devcluster import ClusterState, KubeRayEmulator, attach
    from kuberl.devcluster.binaries import find_binaries

    state = ClusterState.load(args.dir or default_dir())
    emulator = KubeRayEmulator(attach(state.kubeconfig, find_binaries(state.bin_dir)))
    cluster_name = emulator.provision(args.namespace, args.rayjob, timeout=args.timeout)
    emulator.start_job(args.namespace, args.rayjob, "RUNNING")
    print(f"RayJob {args.namespace}/{args.rayjob}: RayCluster {cluster_name} ready, driver RUNNING",
          file=sys.stderr)
    return 0
