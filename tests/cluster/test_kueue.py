"""Kueue in the local control plane: its Configuration and loopback webhooks (pure), and the real
manager suspending a queued RayJob through its webhook while everything unqueued runs untouched."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.devcluster import KUBERAY_NAMESPACE, KUEUE_NAMESPACE
from kuberl.devcluster.kueue import (
    MUTATING_NAME,
    VALIDATING_NAME,
    configuration,
    ensure_metrics_cert,
    loopback_webhooks,
)
from kuberl.devcluster.pki import write_pki
from tests.operator.conftest import wait_for

ROOT = Path(__file__).resolve().parents[2]


def _hook(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "admissionReviewVersions": ["v1"], "failurePolicy": "Fail",
            "sideEffects": "None",
            "clientConfig": {"service": {"name": "webhook-service", "namespace": "system",
                                         "path": path}},
            "rules": [{"apiGroups": ["x"], "apiVersions": ["v1"], "operations": ["CREATE"],
                       "resources": ["x"]}]}


MANIFESTS = [
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
     "metadata": {"name": "mutating-webhook-configuration"},
     "webhooks": [_hook("mjob.kb.io", "/mutate-batch-v1-job"), _hook("mpod.kb.io", "/mutate--v1-pod"),
                  _hook("mrayjob.kb.io", "/mutate-ray-io-v1-rayjob"),
                  _hook("mraycluster.kb.io", "/mutate-ray-io-v1-raycluster"),
                  _hook("mworkload.kb.io", "/mutate-kueue-x-k8s-io-v1beta2-workload")]},
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
     "metadata": {"name": "validating-webhook-configuration"},
     "webhooks": [_hook("vrayjob.kb.io", "/validate-ray-io-v1-rayjob"),
                  _hook("vcq.kb.io", "/validate-kueue-x-k8s-io-v1beta2-clusterqueue")]},
]


def test_only_the_webhooks_kueue_serves_are_registered_by_loopback_url() -> None:
    # Kueue serves no batch/Job, pod or RayCluster webhook with only ray.io/rayjob enabled: registering
    # them (failurePolicy Fail) would break KubeRay's submitter Job and every pod.
    mutating, validating = loopback_webhooks(MANIFESTS, "https://127.0.0.1:9443", "Q0E=")
    assert mutating["metadata"]["name"] == MUTATING_NAME
    assert validating["metadata"]["name"] == VALIDATING_NAME
    assert [h["name"] for h in mutating["webhooks"]] == ["mrayjob.kb.io", "mworkload.kb.io"]
    assert [h["name"] for h in validating["webhooks"]] == ["vrayjob.kb.io", "vcq.kb.io"]
    hook = mutating["webhooks"][0]
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/mutate-ray-io-v1-rayjob",
                                    "caBundle": "Q0E="}
    assert hook["failurePolicy"] == "Fail" and hook["rules"] == MANIFESTS[0]["webhooks"][2]["rules"]


def test_configuration_binds_to_loopback_and_queues_only_labelled_rayjobs(tmp_path: Path) -> None:
    cfg = configuration(webhook_port=1, cert_dir=tmp_path, metrics_port=2, health_port=3)
    assert cfg["manageJobsWithoutQueueName"] is False
    assert cfg["integrations"]["frameworks"] == ["ray.io/rayjob"]
    assert cfg["webhook"] == {"host": "127.0.0.1", "port": 1, "certDir": str(tmp_path)}
    assert cfg["metrics"]["bindAddress"] == "127.0.0.1:2"
    assert cfg["health"]["healthProbeBindAddress"] == "127.0.0.1:3"
    assert cfg["leaderElection"] == {"leaderElect": False}
    assert cfg["internalCertManagement"] == {"enable": False}


def test_metrics_certificate_is_written_once_and_kept(tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki")
    target = tmp_path / "etc-kueue"
    ensure_metrics_cert(pki, target)
    first = (target / "tls.crt").read_bytes()
    assert first.startswith(b"-----BEGIN CERTIFICATE-----")
    assert (target / "tls.key").stat().st_mode & 0o077 == 0
    ensure_metrics_cert(write_pki(tmp_path / "other"), target)
    assert (target / "tls.crt").read_bytes() == first


def _rayjob(name: str, labels: dict[str, str]) -> dict[str, Any]:
    container = {"name": "ray-head", "image": "rayproject/ray:2.60.0",
                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}}
    return {"apiVersion": "ray.io/v1", "kind": "RayJob",
            "metadata": {"name": name, "namespace": KUBERAY_NAMESPACE, "labels": labels},
            "spec": {"entrypoint": "python -c 'print(1)'", "shutdownAfterJobFinishes": True,
                     "rayClusterSpec": {"headGroupSpec": {"rayStartParams": {},
                                                          "template": {"spec": {
                                                              "containers": [container]}}}}}}


@pytest.mark.cluster
def test_kueue_suspends_a_queued_rayjob_by_webhook_and_leaves_others_alone(kueue_cluster) -> None:
    kc = kueue_cluster
    hooks = json.loads(kc.kubectl("get", "mutatingwebhookconfiguration", MUTATING_NAME,
                                  "-o", "json").stdout)["webhooks"]
    ca = (kc.state.directory / "pki" / "ca.crt").read_bytes()
    assert all(base64.b64decode(h["clientConfig"]["caBundle"]) == ca for h in hooks)
    assert all(h["clientConfig"]["url"].startswith("https://127.0.0.1:") for h in hooks)
    assert kc.get("namespace", KUEUE_NAMESPACE) is not None
    version = kc.kubectl("get", "--raw", "/apis/kueue.x-k8s.io/v1beta2").stdout
    assert '"workloads"' in version

    kc.apply([d for d in yaml.safe_load_all((ROOT / "examples/kueue/h100-pool.yaml").read_text())
              if d and d["kind"] != "LocalQueue"])
    # The RayJob is created WITHOUT spec.suspend: Kueue's mutating webhook suspends it.
    kc.kubectl("create", "-f", "-",
                input=json.dumps(_rayjob("queued", {"kueue.x-k8s.io/queue-name": "nowhere"})))
    kc.kubectl("create", "-f", "-", input=json.dumps(_rayjob("free", {})))
    try:
        queued = kc.get("rayjob", "queued", KUBERAY_NAMESPACE)
        free = kc.get("rayjob", "free", KUBERAY_NAMESPACE)
        assert queued is not None and queued["spec"]["suspend"] is True
        assert free is not None and not free["spec"].get("suspend")
        # Kueue's controller makes a Workload for the queued job only, pending: its queue is missing.
        workload = wait_for(lambda: next(iter(json.loads(kc.kubectl(
            "get", "workloads", "-n", KUBERAY_NAMESPACE, "-o", "json").stdout)["items"]), None),
            timeout=60, what="Kueue to create the Workload")
        assert workload["metadata"]["ownerReferences"][0]["name"] == "queued"
        assert workload["spec"]["queueName"] == "nowhere"
        # Kueue's validating webhook rejects what its RayJob integration cannot run.
        bad = _rayjob("bad", {"kueue.x-k8s.io/queue-name": "nowhere"})
        bad["spec"]["shutdownAfterJobFinishes"] = False
        refused = kc.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
        assert refused.returncode != 0 and "shutdownAfterJobFinishes" in refused.stderr
    finally:
        kc.kubectl("delete", "rayjob", "queued", "free", "-n", KUBERAY_NAMESPACE, "--wait=false",
                   check=False)
