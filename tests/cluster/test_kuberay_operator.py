"""The real KubeRay operator (v1.5.0, built from its Go module) on the local control plane: a RayJob
shaped like kuberl's becomes a RayCluster whose head and worker pods the real scheduler places on
fake H100 nodes, and deleting the RayJob garbage-collects the whole tree. (Ray itself never
starts: the nodes are fake.)"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from kuberl.devcluster import KUBERAY_NAMESPACE, Cluster, find_binaries, start_kuberay_operator
from kuberl.devcluster.processes import ProcessRecord, stop
from tests.cluster.test_kuberay_schema import realistic_rayjob

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def kuberay_operator(kube_cluster: Cluster) -> Iterator[ProcessRecord]:
    if find_binaries().kuberay_operator is None:
        pytest.fail("hack/cluster/build.sh did not build the KubeRay operator; see its kuberay.log")
    rec = start_kuberay_operator(kube_cluster)
    yield rec
    stop(rec)


def _wait(what: str, probe: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _pods(cluster: Cluster, selector: str) -> list[dict[str, Any]]:
    return json.loads(cluster.kubectl("get", "pods", "-n", KUBERAY_NAMESPACE, "-l", selector,
                                      "-o", "json").stdout)["items"]


def test_rayjob_becomes_raycluster_with_running_gpu_pods_and_is_collected(
        kube_cluster: Cluster, kuberay_operator: ProcessRecord) -> None:
    job = realistic_rayjob("grpo-real")
    job["metadata"]["namespace"] = KUBERAY_NAMESPACE
    kube_cluster.apply(job)

    def cluster_name() -> str | None:
        got = kube_cluster.get("rayjob", "grpo-real", KUBERAY_NAMESPACE) or {}
        return (got.get("status") or {}).get("rayClusterName")

    name = _wait("KubeRay to name the RayCluster", cluster_name)
    raycluster = _wait("the RayCluster",
                       lambda: kube_cluster.get("raycluster", name, KUBERAY_NAMESPACE))
    assert raycluster["metadata"]["ownerReferences"][0]["kind"] == "RayJob"

    def all_running() -> list[dict[str, Any]] | None:
        pods = _pods(kube_cluster, f"ray.io/cluster={name}")
        ok = len(pods) == 3 and all(p.get("status", {}).get("phase") == "Running" for p in pods)
        return pods if ok else None

    pods = _wait("head + trainer + rollout pods Running", all_running)
    groups = sorted(p["metadata"]["labels"]["ray.io/group"] for p in pods)
    assert groups == ["headgroup", "rollout", "trainer"]
    for pod in pods:
        gpus = pod["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")
        if pod["metadata"]["labels"]["ray.io/node-type"] == "worker":
            assert gpus == "4"
            node = kube_cluster.get("node", pod["spec"]["nodeName"])
            assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"

    status = kube_cluster.get("rayjob", "grpo-real", KUBERAY_NAMESPACE)["status"]
    assert status["jobDeploymentStatus"] in {"Initializing", "Running"}, status

    kube_cluster.kubectl("delete", "rayjob", "grpo-real", "-n", KUBERAY_NAMESPACE, "--wait=false")
    _wait("the RayCluster and its pods to be garbage-collected",
          lambda: kube_cluster.get("raycluster", name, KUBERAY_NAMESPACE) is None
          and not _pods(kube_cluster, f"ray.io/cluster={name}"), timeout=60)
