"""The chart against the real local control plane: server-side dry run of everything it renders, a real
``helm install``, and the operator run with the installed Deployment's own arguments under the chart's
ServiceAccount token, reconciling a job with nothing but the chart's RBAC."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.devcluster import Cluster
from kuberl.monitoring import dashboards
from kuberl.monitoring.prometheus import LocalPrometheus, free_port
from tests.charts.conftest import CHART, FEATURE_VALUES, REPO, run_helm

pytestmark = pytest.mark.cluster


class Kubectl:
    def __init__(self, binary: Path, kubeconfig: str) -> None:
        self.binary, self.kubeconfig = binary, kubeconfig

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(self.binary), "--kubeconfig", self.kubeconfig, *args], input=input,
                             capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def kubeconfig(kube_cluster: Cluster) -> str:
    """The kubeconfig of tests/conftest.py's ``kube_cluster`` (the real local control plane)."""
    return str(kube_cluster.kubeconfig)


@pytest.fixture(scope="module")
def kubectl(kubeconfig: str, helm_binaries: dict[str, Path]) -> Kubectl:
    cached = helm_binaries["helm4"].parent.parent / "kubectl-v1.35" / "kubectl"
    kc = Kubectl(cached if cached.exists() else Path(shutil.which("kubectl") or "kubectl"), kubeconfig)
    if kc("get", "crd", "rayjobs.ray.io", check=False).returncode != 0:
        pytest.fail("the KubeRay RayJob CRD is not installed on the test control plane")
    return kc


@pytest.fixture(scope="module")
def namespaces(kubectl: Kubectl) -> Iterator[tuple[str, str]]:
    """(release namespace, watched namespace), both fresh."""
    suffix = uuid.uuid4().hex[:6]
    names = (f"kuberl-system-{suffix}", f"team-{suffix}")
    for name in names:
        kubectl("create", "namespace", name)
    yield names
    for name in names:
        kubectl("delete", "namespace", name, "--wait=false", check=False)


def _render(helm: Path, release: str, namespace: str, *sets: str) -> list[dict[str, Any]]:
    args = ["template", release, str(CHART), "--namespace", namespace, "--include-crds", "-f", str(FEATURE_VALUES)]
    for s in sets:
        args += ["--set", s]
    out = run_helm(helm, *args)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_every_rendered_object_passes_server_side_dry_run(kubectl: Kubectl, helm_binaries, namespaces) -> None:
    release_ns, watched = namespaces
    objects = _render(helm_binaries["helm4"], "dry", release_ns, f"watchNamespaces={{{watched}}}")
    have_monitoring = kubectl("get", "crd", "servicemonitors.monitoring.coreos.com", check=False).returncode == 0
    checked = [o for o in objects
               if have_monitoring or not o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in checked} >= {"CustomResourceDefinition", "Deployment", "ClusterRole", "Role",
                                             "RoleBinding", "ServiceAccount", "Service", "ConfigMap"}
    out = kubectl("apply", "--server-side", "--dry-run=server", "--force-conflicts", "-f", "-",
                  input=yaml.safe_dump_all(checked))
    assert out.stdout.count("(server dry run)") == len(checked), out.stdout


@pytest.fixture(scope="module")
def installed(kubectl: Kubectl, kubeconfig: str, helm_binaries, namespaces) -> Iterator[dict[str, Any]]:
    """``helm install`` (helm 4) into the release namespace, watching the other one; yields the release."""
    release_ns, watched = namespaces
    release = f"kuberl-{uuid.uuid4().hex[:6]}"
    ports = {"metrics": free_port(), "health": free_port()}
    out = run_helm(helm_binaries["helm4"], "install", release, str(CHART), "--namespace", release_ns,
                   "--kubeconfig", kubeconfig, "--set", f"watchNamespaces={{{watched}}}",
                   "--set", f"operator.metricsPort={ports['metrics']}",
                   "--set", f"operator.healthPort={ports['health']}",
                   "--set", f"metricsService.port={ports['metrics']}")
    assert out.returncode == 0, out.stderr
    yield {"release": release, "namespace": release_ns, "watched": watched, "ports": ports}
    run_helm(helm_binaries["helm4"], "uninstall", release, "--namespace", release_ns, "--kubeconfig", kubeconfig)


def _container(kubectl: Kubectl, installed: dict[str, Any]) -> dict[str, Any]:
    deployment = kubectl.json("get", "deployment", installed["release"], "-n", installed["namespace"])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_installed_deployment_command_is_what_the_operator_accepts(kubectl: Kubectl, installed) -> None:
    from kuberl.cli.main import build_parser

    container = _container(kubectl, installed)
    assert container["command"] == ["kuberl"]
    args = build_parser().parse_args(container["args"])
    assert args.command == "operator" and args.namespaces == [installed["watched"]]
    assert args.metrics_port == installed["ports"]["metrics"]


def _service_account_kubeconfig(kubectl: Kubectl, kubeconfig: str, installed: dict[str, Any],
                                path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (as the pod would in-cluster)."""
    token = kubectl("create", "token", installed["release"], "-n", installed["namespace"],
                    "--duration=1h").stdout.strip()
    admin = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:  # inline a relative CA path so the file can live elsewhere
        ca = (Path(kubeconfig).parent / cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "local", "user": "sa"}}],
    }))
    return path


CHILD_KINDS = ("configmaps", "serviceaccounts", "roles.rbac.authorization.k8s.io",
               "rolebindings.rbac.authorization.k8s.io")


def _children(kubectl: Kubectl, namespace: str) -> dict[str, list[dict[str, Any]]]:
    return {kind: kubectl.json("get", kind, "-n", namespace, "-l", "kuberl.io/job-name=chart-rbac")["items"]
            for kind in CHILD_KINDS}


@pytest.fixture(scope="module")
def operator_run(kubectl: Kubectl, kubeconfig: str, installed, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """The operator, run with the installed Deployment's own arguments as the chart's ServiceAccount (the
    pod's in-cluster identity), scraped by a real Prometheus; a job is applied and reconciled."""
    tmp = tmp_path_factory.mktemp("chart-operator")
    sa_config = _service_account_kubeconfig(kubectl, kubeconfig, installed, tmp / "sa.kubeconfig")
    container = _container(kubectl, installed)
    log_path = tmp / "operator.log"
    cmd = [sys.executable, "-m", "kuberl.cli.main", *container["args"], "--kubeconfig", str(sa_config),
           "--resync-seconds", "2"]
    env = {**os.environ, "KUBECONFIG": str(sa_config)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    prom = LocalPrometheus({"operator": f"127.0.0.1:{installed['ports']['metrics']}"}, interval="1s")
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        prom.start()
        started = time.time()
        job = yaml.safe_load((REPO / "examples" / "glm4-9b-dapo-math.yaml").read_text())
        job["metadata"] = {"name": "chart-rbac", "namespace": installed["watched"]}
        kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump(job))
        deadline = time.monotonic() + 90
        rayjob: dict[str, Any] | None = None
        status: dict[str, Any] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            got = kubectl("get", "rayjobs.ray.io", "chart-rbac", "-n", installed["watched"], "-o", "json",
                          check=False)
            rayjob = json.loads(got.stdout) if got.returncode == 0 else None
            status = kubectl.json("get", "rltrainingjobs.kuberl.io", "chart-rbac", "-n",
                                  installed["watched"]).get("status", {})
            if rayjob and status.get("phase") and all(_children(kubectl, installed["watched"]).values()):
                break  # children are applied concurrently: wait for all of them, not just the RayJob
            time.sleep(1)
        time.sleep(3)  # a few more scrapes after the reconcile
        yield {"proc": proc, "log": log_path, "rayjob": rayjob, "status": status, "prom": prom,
               "started": started}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        prom.stop()


def test_operator_reconciles_with_only_the_charts_rbac(kubectl: Kubectl, installed, operator_run) -> None:
    """Least privilege is enough: the job becomes all its children and gets a status, without a single 403."""
    log = operator_run["log"].read_text()
    assert operator_run["proc"].poll() is None, f"operator exited: {log[-3000:]}"
    assert operator_run["rayjob"] is not None, f"no RayJob after 90 s; operator log: {log[-3000:]}"
    assert operator_run["status"].get("phase"), f"no status.phase; operator log: {log[-3000:]}"
    assert "forbidden" not in log.lower() and " 403" not in log, log[-3000:]
    for kind, items in _children(kubectl, installed["watched"]).items():
        assert items, f"operator created no {kind}"


def test_operator_dashboard_queries_return_data_from_the_running_operator(operator_run, tmp_path) -> None:
    """A real Prometheus scraping the real operator process: every operator panel has data, except the
    errors panel, whose counter has no series until a first error (none happen in a clean reconcile).
    With KUBERL_SNAPSHOT_DIR set, the panels are also drawn there (docs/images/operator-dashboard.png)."""
    from kuberl.monitoring import snapshot

    prom: LocalPrometheus = operator_run["prom"]
    board = dashboards.to_grafana(dashboards.operator())
    empty = [title for title, expr in dashboards.panel_queries(board)
             if not prom.query(dashboards.substitute(expr, rate_interval="1m"))]
    assert set(empty) <= {"Reconcile errors / s"}, empty
    out = Path(os.environ.get("KUBERL_SNAPSHOT_DIR", tmp_path)) / "operator-dashboard.png"
    drawn_empty = snapshot.draw(prom, board, operator_run["started"], time.time(), out, {})
    assert set(drawn_empty) == set(empty)


def test_first_reconcile_succeeds_under_the_charts_rbac(operator_run) -> None:
    log = operator_run["log"].read_text()
    assert "failed temporarily" not in log, log[-3000:]
