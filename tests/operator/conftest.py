"""Fixtures for the operator's cluster tests: kubectl against the real local apiserver, a namespace, and
the operator itself running as a subprocess (``python -m kuberl.operator``), exactly as users run it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.tools import require

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "kuberl.io_rltrainingjobs.yaml"
T = TypeVar("T")


def kubectl_binary() -> str:
    cached = Path(os.environ.get("KUBERL_CACHE", Path.home() / ".cache" / "kuberl"))
    cached = cached / "tools" / "kubectl-v1.35" / "kubectl"
    if cached.exists():
        return str(cached)
    return require("kubectl")


def wait_for(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2,
             what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except AssertionError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Kubectl:
    """kubectl bound to one kubeconfig (and optionally a namespace)."""

    def __init__(self, kubeconfig: str, namespace: str | None = None,
                 binary: str | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.binary = binary or kubectl_binary()

    def in_namespace(self, namespace: str) -> Kubectl:
        return Kubectl(self.kubeconfig, namespace, self.binary)

    def run(self, *args: str, input: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        cmd = [self.binary, "--kubeconfig", self.kubeconfig]
        if self.namespace:
            cmd += ["-n", self.namespace]
        proc = subprocess.run([*cmd, *args], input=input, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], *extra: str,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        docs = manifest if isinstance(manifest, list) else [manifest]
        return self.run("apply", "--server-side", "-f", "-", *extra,
                        input=yaml.safe_dump_all(docs), check=check)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        proc = self.run("get", kind, name, "-o", "json", check=False)
        if proc.returncode != 0:
            if "NotFound" in proc.stderr or "not found" in proc.stderr:
                return None
            raise AssertionError(proc.stderr)
        return json.loads(proc.stdout)

    def list(self, kind: str, selector: str | None = None) -> list[dict[str, Any]]:
        args = ["get", kind, "-o", "json"]
        if selector:
            args += ["-l", selector]
        return json.loads(self.run(*args).stdout)["items"]

    def patch(self, kind: str, name: str, patch: dict[str, Any], *, subresource: str | None = None,
              check: bool = True) -> subprocess.CompletedProcess[str]:
        args = ["patch", kind, name, "--type", "merge", "-p", json.dumps(patch)]
        if subresource:
            args += ["--subresource", subresource]
        return self.run(*args, check=check)


@pytest.fixture(scope="session")
def kubeconfig(kube_cluster: Any) -> str:
    """The kubeconfig of the session's real control plane (tests/conftest.py)."""
    return str(kube_cluster.kubeconfig)


@pytest.fixture(scope="session")
def kubectl(kube_cluster: Any) -> Kubectl:
    """kubectl on the test cluster, with kuberl's CRD applied (the session cluster has it already)."""
    kc = Kubectl(str(kube_cluster.kubeconfig), binary=kube_cluster.kubectl_binary)
    kc.run("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    kc.run("wait", "--for=condition=Established", "crd/rltrainingjobs.kuberl.io", "--timeout=60s")
    if kc.run("get", "crd", "rayjobs.ray.io", check=False).returncode != 0:
        pytest.fail("the KubeRay RayJob CRD is not installed on the test control plane")
    return kc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """``python -m kuberl.operator`` for one namespace (or all); restartable and killable mid-flight."""

    def __init__(self, kubeconfig: str, namespace: str | None, log_path: Path, resync: float = 2.0,
                 bytecode: bool = False) -> None:
        self.kubeconfig, self.namespace, self.log_path, self.resync = kubeconfig, namespace, log_path, resync
        self.bytecode = bytecode  # allow .pyc files, as an installed image has them
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        if self.bytecode:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        where = ["--namespace", self.namespace] if self.namespace else []  # none: cluster-wide
        cmd = [sys.executable, "-m", "kuberl.operator", *where,
               "--metrics-port", str(self.metrics_port), "--metrics-addr", "127.0.0.1",
               "--resync-seconds", str(self.resync), "--kubeconfig", self.kubeconfig,
               "--worker-image", "kuberl/worker:test"]
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._ready, timeout=90, what=f"operator metrics (log: {self.log_path})")

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log_path.read_text()[-3000:]
        return bool(self.metrics())

    def metrics(self) -> str:
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies or the pod is OOM-killed."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def namespace(kubectl: Kubectl) -> Iterator[str]:
    name = f"op-{uuid.uuid4().hex[:8]}"
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def ns_kubectl(kubectl: Kubectl, namespace: str) -> Kubectl:
    return kubectl.in_namespace(namespace)


@pytest.fixture(scope="module")
def operator(kubeconfig: str, namespace: str, tmp_path_factory: pytest.TempPathFactory,
             kubectl: Kubectl) -> Iterator[OperatorProcess]:
    op = OperatorProcess(kubeconfig, namespace, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()
