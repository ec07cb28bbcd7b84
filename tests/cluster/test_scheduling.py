"""The real scheduler places GPU pods on kwok's fake H100 nodes and enforces ``nvidia.com/gpu``
capacity: a pod asking for all 8 GPUs of a node runs there; one more GPU on the same node stays
Pending."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from kuberl.devcluster import FAKE_NODE_TOLERATIONS, Cluster, h100_node

pytestmark = pytest.mark.cluster


def gpu_pod(name: str, node_label: str, gpus: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [{"name": "trainer", "image": "kuberl/megatron:test",
                            "resources": {"limits": {"nvidia.com/gpu": gpus}}}],
            "nodeSelector": {"kuberl.io/test-node": node_label},
            "tolerations": [*copy.deepcopy(FAKE_NODE_TOLERATIONS),
                            {"key": "kuberl.io/test-node", "operator": "Exists"}],
            "terminationGracePeriodSeconds": 0,
        },
    }


def wait_pod(cluster: Cluster, name: str, check: Any, what: str, timeout: float = 30.0
             ) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    pod: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        pod = cluster.get("pod", name, "default")
        if pod is not None and check(pod):
            return pod
        time.sleep(0.2)
    last = json.dumps((pod or {}).get("status"))
    raise AssertionError(f"pod {name} never became {what}; last status: {last}")


@pytest.fixture
def private_node(kube_cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A fresh fake 8×H100 node only this test's pods select and tolerate, so nothing else takes its
    GPUs."""
    label = uuid.uuid4().hex[:8]
    node = h100_node(f"h100-test-{label}")
    node["metadata"]["labels"]["kuberl.io/test-node"] = label
    taint = {"key": "kuberl.io/test-node", "value": label, "effect": "NoSchedule"}
    node["spec"]["taints"].append(taint)
    kube_cluster.kubectl("create", "-f", "-", input=json.dumps(node))
    yield node["metadata"]["name"], label
    kube_cluster.kubectl("delete", "node", node["metadata"]["name"], "--wait=false", check=False)


def test_eight_gpu_pod_runs_on_fake_h100_and_ninth_gpu_stays_pending(
        kube_cluster: Cluster, private_node: tuple[str, str]) -> None:
    node_name, label = private_node
    big, extra = f"gpu8-{label}", f"gpu1-{label}"
    kube_cluster.apply(gpu_pod(big, label, 8))
    pod = wait_pod(kube_cluster, big, lambda p: p.get("status", {}).get("phase") == "Running",
                   "Running")
    assert pod["spec"]["nodeName"] == node_name

    kube_cluster.apply(gpu_pod(extra, label, 1))
    pod = wait_pod(kube_cluster, extra, lambda p: any(
        c["type"] == "PodScheduled" and c["status"] == "False"
        for c in p.get("status", {}).get("conditions", [])), "unschedulable")
    assert pod["status"]["phase"] == "Pending"
    assert "nvidia.com/gpu" in json.dumps(pod["status"]["conditions"])
    assert not pod["spec"].get("nodeName")

    # Freeing the GPUs lets the waiting pod in: the scheduler tracks capacity, not a static verdict.
    kube_cluster.kubectl("delete", "pod", big, "-n", "default", "--wait=true", "--timeout=30s")
    pod = wait_pod(kube_cluster, extra, lambda p: p.get("status", {}).get("phase") == "Running",
                   "Running after the 8-GPU pod left")
    assert pod["spec"]["nodeName"] == node_name
    kube_cluster.kubectl("delete", "pod", extra, "-n", "default", "--wait=false")
