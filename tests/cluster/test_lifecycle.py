"""``kuberl dev cluster up|env|status|down`` as a user runs them, each in its own process: ``down``
from a different process stops every component (whole process groups) and frees every port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kuberl.devcluster import ClusterState
from kuberl.devcluster.processes import is_running

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def kuberl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kuberl.cli.main", "dev", "cluster", *args],
                          capture_output=True, text=True, timeout=timeout)


def listening_ports(state: ClusterState) -> set[int]:
    """Loopback ports the cluster's components were told to serve on, read back from their flags."""
    ports = {int(state.server.rsplit(":", 1)[1])}
    for rec in state.processes:
        cmdline = Path(f"/proc/{rec.pid}/cmdline").read_bytes().split(b"\0")
        for arg in cmdline:
            text = arg.decode()
            if text.startswith(("--listen-client-urls", "--listen-peer-urls", "--secure-port")):
                ports.add(int(text.rsplit(":", 1)[-1].split("=")[-1]))
    return ports


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_env_status_down_from_separate_processes(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    started = time.monotonic()
    up = kuberl("up", "--dir", str(directory), "--nodes", "1")
    startup = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    kubeconfig = Path(up.stdout.strip())
    assert kubeconfig.is_file() and kubeconfig.parent == directory
    try:
        env = kuberl("env", "--dir", str(directory))
        exports = env.stdout.strip().splitlines()
        assert exports[0] == f"export KUBECONFIG={kubeconfig}"
        assert exports[1].startswith('export PATH="') and exports[1].endswith(':$PATH"')
        assert (Path(exports[1].split('"')[1].split(":")[0]) / "kubectl").exists()
        assert kuberl("status", "--dir", str(directory)).returncode == 0

        state = ClusterState.load(directory)
        names = {r.name for r in state.processes}
        assert {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                "kwok"} <= names
        ports = listening_ports(state)
        assert all(port_open(p) for p in ports), ports
        kubectl = str(state.bin_dir / "kubectl")
        nodes = subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "get", "nodes",
                                "-o", "json"],
                               capture_output=True, text=True, check=True)
        assert len(json.loads(nodes.stdout)["items"]) == 1
    finally:
        down = kuberl("down", "--dir", str(directory))
    assert down.returncode == 0, down.stderr
    assert not any(is_running(r) for r in state.processes)
    assert not [p for p in ports if port_open(p)], "ports still served after down"
    assert not directory.exists(), "down should remove the cluster directory that up created"
    print(f"cold-process cluster start (CLI, 1 node): {startup:.1f} s")
