"""The KubeRay stand-in drives a RayJob through KubeRay's states on the real control plane:
RayCluster and pods with KubeRay's names and labels, GPU pods Running on fake H100 nodes, status
through the status subresource, and the whole tree garbage-collected when the RayJob is deleted."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest

from kuberl.devcluster import Cluster
from kuberl.devcluster.kuberay_emulator import KubeRayEmulator
from tests.cluster.test_kuberay_schema import realistic_rayjob

pytestmark = pytest.mark.cluster


@pytest.fixture
def namespace(kube_cluster: Cluster) -> Iterator[str]:
    name = f"kr-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", name)
    yield name
    kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _pods(cluster: Cluster, namespace: str, selector: str) -> list[dict]:
    return json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", selector,
                                      "-o", "json").stdout)["items"]


def test_rayjob_goes_from_initializing_to_complete_and_its_tree_is_collected(
        kube_cluster: Cluster, namespace: str) -> None:
    job = realistic_rayjob("grpo")
    job["metadata"]["namespace"] = namespace
    kube_cluster.apply(job)
    kuberay = KubeRayEmulator(kube_cluster)

    cluster_name = kuberay.provision(namespace, "grpo")
    assert cluster_name.startswith("grpo-") and len(cluster_name) == len("grpo-") + 5
    status = kube_cluster.get("rayjob", "grpo", namespace)["status"]
    assert status["jobDeploymentStatus"] == "Initializing"
    assert status["rayClusterName"] == cluster_name
    assert status["rayClusterStatus"]["desiredGPU"] == "8"
    conditions = {c["type"]: c["status"] for c in status["rayClusterStatus"]["conditions"]}
    assert conditions["RayClusterProvisioned"] == "True"

    raycluster = kube_cluster.get("raycluster", cluster_name, namespace)
    assert raycluster["metadata"]["ownerReferences"][0]["kind"] == "RayJob"
    head = _pods(kube_cluster, namespace, f"ray.io/cluster={cluster_name},ray.io/node-type=head")
    trainers = _pods(kube_cluster, namespace, f"ray.io/cluster={cluster_name},ray.io/group=trainer")
    rollouts = _pods(kube_cluster, namespace, f"ray.io/cluster={cluster_name},ray.io/group=rollout")
    assert (len(head), len(trainers), len(rollouts)) == (1, 1, 1)
    for pod in [*head, *trainers, *rollouts]:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"], "Running without a node: the scheduler did not bind it"
    gpu_node = trainers[0]["spec"]["nodeName"]
    node = kube_cluster.get("node", gpu_node)
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    assert trainers[0]["metadata"]["name"].startswith(f"{cluster_name}-trainer-worker-")

    kuberay.start_job(namespace, "grpo")
    assert kube_cluster.get("rayjob", "grpo", namespace)["status"]["jobStatus"] == "RUNNING"
    kuberay.finish(namespace, "grpo", "SUCCEEDED")
    status = kube_cluster.get("rayjob", "grpo", namespace)["status"]
    assert (status["jobDeploymentStatus"], status["jobStatus"]) == ("Complete", "SUCCEEDED")

    kube_cluster.kubectl("delete", "rayjob", "grpo", "-n", namespace, "--wait=false")
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        left = _pods(kube_cluster, namespace, f"ray.io/cluster={cluster_name}")
        if kube_cluster.get("raycluster", cluster_name, namespace) is None and not left:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("RayCluster or its pods survived the RayJob's deletion")


def test_failed_job_reports_app_failed(kube_cluster: Cluster, namespace: str) -> None:
    job = realistic_rayjob("grpo-fail")
    job["metadata"]["namespace"] = namespace
    kube_cluster.apply(job)
    kuberay = KubeRayEmulator(kube_cluster)
    kuberay.provision(namespace, "grpo-fail", wait_running=False)
    kuberay.finish(namespace, "grpo-fail", "FAILED", message="reward function raised")
    status = kube_cluster.get("rayjob", "grpo-fail", namespace)["status"]
    assert (status["jobDeploymentStatus"], status["reason"]) == ("Failed", "AppFailed")
    assert status["message"] == "reward function raised"
