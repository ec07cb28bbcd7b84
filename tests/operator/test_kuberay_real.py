"""The operator with the real KubeRay operator: KubeRay accepts our RayJob, builds its Ray cluster, and
the real scheduler puts each group on fake 8×H100 nodes with the GPUs the placement asks for.

Ray itself never runs (kwok pods have no processes), so the driver never reports RUNNING; the job stops
at Starting with the cluster ready, which is as far as a cluster without GPUs can go. KubeRay is built on
a best-effort basis (hack/cluster/build.sh); without its binary these tests are skipped locally and fail
under CI.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.devcluster import (
    FAKE_NODE_TOLERATIONS,
    KUBERAY_NAMESPACE,
    find_binaries,
    start_cluster,
    stop_cluster,
)
from tests.operator.conftest import Kubectl, OperatorProcess, wait_for
from tests.tools import missing_tool

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REFERENCE = Path(__file__).resolve().parents[2] / "examples" / "glm4-9b-dapo-math.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture(scope="module")
def kuberay_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A control plane of its own with the real KubeRay operator (it watches kuberay-system only)."""
    if find_binaries().kuberay_operator is None:
        missing_tool("the KubeRay operator binary", "hack/cluster/build.sh builds it (see its kuberay.log)")
    cluster = start_cluster(tmp_path_factory.mktemp("kuberay-cluster"), nodes=1,
                            kuberay_operator=True, remove_on_stop=False)
    try:
        yield cluster
    finally:
        stop_cluster(cluster.state)


@pytest.fixture(scope="module")
def kc(kuberay_cluster: Any) -> Kubectl:
    return Kubectl(str(kuberay_cluster.kubeconfig), KUBERAY_NAMESPACE, kuberay_cluster.kubectl_binary)


@pytest.fixture(scope="module")
def operator(kuberay_cluster: Any, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    # Cluster-wide (no --namespace): this control plane is the module's own.
    op = OperatorProcess(str(kuberay_cluster.kubeconfig), None,
                         tmp_path_factory.mktemp("operator-kuberay") / "operator.log")
    op.start()
    yield op
    op.stop()


def _job(name: str) -> dict[str, Any]:
    doc = yaml.safe_load(REFERENCE.read_text())
    doc["metadata"] = {"name": name}
    cluster = doc["spec"]["cluster"]
    cluster.pop("storage")  # no PersistentVolumes on fake nodes
    cluster["tolerations"] = [t for t in FAKE_NODE_TOLERATIONS if t["key"] != "nvidia.com/gpu"]
    cluster["cpusPerGpu"], cluster["memoryPerGpuGi"] = 2, 16
    return doc


def _status(kc: Kubectl, kind: str, name: str) -> dict[str, Any]:
    return (kc.get(kind, name) or {}).get("status") or {}


def ray_start_flags(pod: dict[str, Any]) -> dict[str, str]:
    """``--name=value`` flags of the ``ray start`` command in the container's shell line."""
    words = shlex.split(pod["spec"]["containers"][0]["args"][0])
    start = words.index("start")
    flags = {}
    for word in words[start + 1:]:
        if word in ("&&", ";", "|"):
            break
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            flags[name] = value
    return flags


def test_kuberay_builds_our_cluster_on_h100_nodes(operator: OperatorProcess, kc: Kubectl,
                                                  kuberay_cluster: Any) -> None:
    kc.apply(_job("real"))
    rj = wait_for(lambda: (s := _status(kc, "rayjob", "real")).get("jobDeploymentStatus") == "Running"
                  and s, timeout=90, interval=0.5, what="KubeRay to bring the RayJob to Running")
    cluster = rj["rayClusterName"]
    st = wait_for(lambda: (s := _status(kc, "rltrainingjob", "real")).get("rayClusterName") == cluster
                  and s, what="the Ray cluster in the job's status")
    assert (st["phase"], st["reason"]) == ("Starting", "DriverPending")
    assert st["dashboardURL"].startswith(f"http://{cluster}-head-svc.")
    ready = next(c for c in st["conditions"] if c["type"] == "ClusterReady")
    assert ready["status"] == "True"

    pods = {p["metadata"]["labels"]["ray.io/group"]: p
            for p in kc.list("pods", f"ray.io/cluster={cluster}")}
    assert set(pods) == {"headgroup", "trainer", "rollout"}
    nodes = {n["metadata"]["name"]: n for n in kc.list("nodes")}
    for group, gpus, resource in [("trainer", "4", "kuberl_trainer"), ("rollout", "4", "kuberl_rollout")]:
        pod = pods[group]
        assert pod["status"]["phase"] == "Running"
        node = nodes[pod["spec"]["nodeName"]]
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
        limits = pod["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == gpus
        # KubeRay's `ray start` line, parsed as its shell would, advertises our custom resource
        # (from the group's typed `resources` map) and the GPUs (from the container's limit).
        flags = ray_start_flags(pod)
        assert json.loads(flags["resources"]) == {resource: int(gpus)}, flags
        assert flags["num-gpus"] == gpus, flags
    assert pods["headgroup"]["status"]["phase"] == "Running"
    # KubeRay parsed every group's resources: no "failed to add accelerator resources" (issue 13).
    log = Path(next(p.log for p in kuberay_cluster.state.processes if p.name == "kuberay-operator"))
    text = log.read_text(errors="replace")
    assert "generateRayStartCommand" in text  # the log is the one that built these pods
    assert "failed to add accelerator resources" not in text
    assert "failed to unmarshal resources" not in text
    assert "nvidia.com/gpu" not in pods["headgroup"]["spec"]["containers"][0]["resources"]["limits"]


def test_suspend_and_resume_through_kuberay(operator: OperatorProcess, kc: Kubectl) -> None:
    if kc.get("rltrainingjob", "real") is None:
        kc.apply(_job("real"))
    wait_for(lambda: _status(kc, "rayjob", "real").get("jobDeploymentStatus") == "Running",
             timeout=90, interval=0.5, what="RayJob Running")
    kc.patch("rltrainingjob", "real", {"spec": {"suspend": True}})
    wait_for(lambda: _status(kc, "rltrainingjob", "real").get("phase") == "Suspended", timeout=90,
             interval=0.5, what="KubeRay to suspend the job (status: "
             f"{_status(kc, 'rayjob', 'real')})")
    wait_for(lambda: not kc.list("rayclusters"), timeout=60, interval=0.5,
             what="KubeRay to delete the suspended job's Ray cluster")
    kc.patch("rltrainingjob", "real", {"spec": {"suspend": False}})
    wait_for(lambda: _status(kc, "rltrainingjob", "real").get("phase") == "Starting", timeout=90,
             interval=0.5, what="the job to start again")
    wait_for(lambda: kc.list("rayclusters"), timeout=60, interval=0.5, what="a new Ray cluster")
