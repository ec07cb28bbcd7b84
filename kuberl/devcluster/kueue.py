"""Kueue's controller manager as a local process beside the control plane (``kuberl dev cluster up
--kueue``): the real gang admission, quota and preemption that platform teams put in front of GPU
pools.

In a cluster Kueue runs as a Deployment behind a Service; here there is neither a pod network nor a
kube-proxy, so its webhooks are served on loopback with a certificate from the cluster's own CA and
its (Mutating|Validating)WebhookConfigurations point at it by ``url``. Only the webhooks of Kueue's
own kinds and of the enabled integration (``ray.io/rayjob``) are registered: the others would
reject every batch Job and pod with "404" because Kueue does not serve them. Leader election is off,
health and metrics bind to free loopback ports, and the visibility API server (a fixed port) is off.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from kuberl.devcluster import processes
from kuberl.devcluster.binaries import BUILD_SCRIPT, Binaries
from kuberl.devcluster.pki import Pki, issue_serving_cert
from kuberl.devcluster.processes import ProcessRecord
from kuberl.errors import ClusterError

log = logging.getLogger(__name__)

KUEUE_VERSION = "v0.17.0"  # keep in step with hack/cluster/build.sh and hack/cluster/kueue/go.mod
KUEUE_NAMESPACE = "kueue-system"
FRAMEWORKS = ("ray.io/rayjob",)
"""Kueue integrations enabled here: kuberl submits RayJobs (their RayClusters belong to them)."""

METRICS_CERT_DIR = Path("/etc/kueue/metrics/certs")
"""Kueue v0.17 reads its metrics serving certificate from this fixed path whenever its internal
certificate management is off (cmd/kueue/main.go); it must exist before the manager starts."""

MUTATING_NAME = "kueue-mutating-webhook-configuration"
VALIDATING_NAME = "kueue-validating-webhook-configuration"


def configuration(*, webhook_port: int, cert_dir: Path, metrics_port: int, health_port: int,
                  namespace: str = KUEUE_NAMESPACE,
                  frameworks: Sequence[str] = FRAMEWORKS) -> dict[str, Any]:
    """Kueue's ``config.kueue.x-k8s.io/v1beta2`` Configuration for a loopback control plane.

    ``manageJobsWithoutQueueName: false``: only jobs labelled ``kueue.x-k8s.io/queue-name`` are
    queued, so everything else in the cluster keeps running as before."""
    return {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": namespace,
        "manageJobsWithoutQueueName": False,
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},  # the cluster's CA signs the webhook's cert
        "integrations": {"frameworks": list(frameworks)},
        "featureGates": {"VisibilityOnDemand": False},  # its API server wants a fixed port
        "clientConnection": {"qps": 50, "burst": 100},
    }


def _webhook_suffixes(frameworks: Sequence[str]) -> tuple[str, ...]:
    """Path endings of the served webhooks: Kueue's own kinds and each ``group/kind`` framework."""
    out = ["-kueue-x-k8s-io-"]
    for framework in frameworks:
        group, _, kind = framework.partition("/")
        out.append(f"-{group.replace('.', '-')}-v1-{kind}")
    return tuple(out)


def _served(path: str, suffixes: Sequence[str]) -> bool:
    return any(s in path if s.endswith("-") else path.endswith(s) for s in suffixes)


def loopback_webhooks(manifests: Sequence[dict[str, Any]], base_url: str, ca_bundle: str,
                      frameworks: Sequence[str] = FRAMEWORKS) -> list[dict[str, Any]]:
    """Kueue's webhook configurations rewritten for a process on loopback: each kept webhook calls
    ``base_url + path`` with ``ca_bundle`` (base64 PEM) instead of the in-cluster Service."""
    suffixes = _webhook_suffixes(frameworks)
    names = {"MutatingWebhookConfiguration": MUTATING_NAME,
             "ValidatingWebhookConfiguration": VALIDATING_NAME}
    out = []
    for doc in manifests:
        if not doc or doc.get("kind") not in names:
            continue
        hooks = []
        for hook in doc.get("webhooks") or []:
            path = ((hook.get("clientConfig") or {}).get("service") or {}).get("path", "")
            if not _served(path, suffixes):
                continue
            hooks.append({**hook, "clientConfig": {"url": base_url + path, "caBundle": ca_bundle},
                          "timeoutSeconds": 10})
        out.append({"apiVersion": "admissionregistration.k8s.io/v1", "kind": doc["kind"],
                    "metadata": {"name": names[doc["kind"]]}, "webhooks": hooks})
    return out


def kueue_argv(binary: Path, config: Path) -> list[str]:
    return [str(binary), f"--config={config}", "--zap-log-level=2"]


def ensure_metrics_cert(pki: Pki, directory: Path = METRICS_CERT_DIR) -> None:
    """Provide the metrics certificate Kueue insists on (see METRICS_CERT_DIR), once per machine.

    An existing pair is kept: Kueue only serves its metrics with it, nobody verifies it here."""
    if (directory / "tls.crt").is_file() and (directory / "tls.key").is_file():
        return
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            issue_serving_cert(pki, Path(tmp) / "tls.crt", Path(tmp) / "tls.key", "kueue-metrics")
            os.replace(Path(tmp) / "tls.key", directory / "tls.key")
            os.replace(Path(tmp) / "tls.crt", directory / "tls.crt")
    except PermissionError as exc:
        raise ClusterError(
            f"Kueue {KUEUE_VERSION} reads its metrics certificate from {directory} (fixed in its "
            f"main.go when internal certificate management is off) and this user cannot create it "
            f"({exc}). Fix: `sudo mkdir -p {directory} && sudo chown $USER {directory}` once"
        ) from None


def require_kueue(b: Binaries) -> Path:
    """The Kueue binary, or ClusterError naming the build log (its build is best effort)."""
    if b.kueue is None or not b.kueue_webhooks.is_file() or not list(b.kueue_crds.glob("*.yaml")):
        build_log = b.bin_dir.parent / "logs" / "kueue.log"
        raise ClusterError(f"the Kueue controller manager ({KUEUE_VERSION}) was not built or its "
                           f"CRDs/webhook manifests are missing under {b.bin_dir.parent} (see "
                           f"{build_log}); run {BUILD_SCRIPT}")
    return b.kueue


def prepare(b: Binaries, pki: Pki, directory: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """Write Kueue's certificate and Configuration under ``directory``; return its argv and the
    webhook configurations to apply before it starts (ports are chosen here)."""
    binary = require_kueue(b)
    ensure_metrics_cert(pki)
    cert_dir = directory / "certs"
    issue_serving_cert(pki, cert_dir / "tls.crt", cert_dir / "tls.key", "kueue-webhook")
    webhook, metrics, health = (processes.free_port() for _ in range(3))
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump(configuration(
        webhook_port=webhook, cert_dir=cert_dir, metrics_port=metrics, health_port=health)))
    ca_bundle = base64.b64encode(pki.ca_cert.read_bytes()).decode()
    manifests = list(yaml.safe_load_all(b.kueue_webhooks.read_text()))
    hooks = loopback_webhooks(manifests, f"https://127.0.0.1:{webhook}", ca_bundle)
    (directory / "health-port").write_text(str(health))
    return kueue_argv(binary, config), hooks


def health_port(directory: Path) -> int:
    return int((directory / "health-port").read_text())


def probe_flavor(name: str = "kuberl-webhook-probe") -> dict[str, Any]:
    """A ResourceFlavor to create with ``--dry-run=server``: it passes only when the apiserver can
    call Kueue's mutating and validating webhooks."""
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": name}}


def start(cluster: Any, b: Binaries, pki: Pki, *, timeout: float = 60.0) -> ProcessRecord:
    """Start Kueue for ``cluster`` (a ``kuberl.devcluster.Cluster`` whose CRDs include Kueue's) and
    wait until its webhooks answer. Returns the process record; the caller records and stops it."""
    from kuberl.devcluster.cluster import _http_ok, _wait

    directory = (cluster.state.directory if cluster.state else cluster.kubeconfig.parent) / "kueue"
    directory.mkdir(parents=True, exist_ok=True)
    argv, hooks = prepare(b, pki, directory)
    if cluster.get("namespace", KUEUE_NAMESPACE) is None:
        cluster.kubectl("create", "namespace", KUEUE_NAMESPACE)
    cluster.apply(hooks, "--force-conflicts")
    log_dir = (cluster.state.directory if cluster.state else cluster.kubeconfig.parent) / "logs"
    env = {"KUBECONFIG": str(cluster.kubeconfig), "PATH": "/usr/bin:/bin"}
    rec = processes.spawn("kueue", argv, log_dir, env=env,
                          die_with_parent=bool(cluster.state and cluster.state.die_with_parent))
    port = health_port(directory)
    try:
        _wait("kueue /readyz", lambda: _http_ok(f"http://127.0.0.1:{port}/readyz"), timeout, [rec])
        _wait("Kueue's webhooks answering the apiserver", lambda: cluster.kubectl(
            "create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(probe_flavor()),
            check=False, timeout=15).returncode == 0, timeout, [rec])
    except BaseException:
        processes.stop(rec)
        raise
    return rec
