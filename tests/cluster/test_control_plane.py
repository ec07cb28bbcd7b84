"""The session control plane is the real thing: pinned versions, every component serving, fake H100
nodes."""

from __future__ import annotations

import json

import pytest

from kuberl.devcluster import GPU_PRODUCT, K8S_VERSION, Cluster

pytestmark = pytest.mark.cluster


def test_apiserver_reports_the_pinned_release_version(kube_cluster: Cluster) -> None:
    version = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"] == K8S_VERSION
    assert (version["major"], version["minor"]) == ("1", K8S_VERSION.split(".")[1])


def test_fake_h100_nodes_are_ready_with_eight_gpus_and_gpu_taint(kube_cluster: Cluster) -> None:
    listed = kube_cluster.kubectl("get", "nodes", "-l", f"nvidia.com/gpu.product={GPU_PRODUCT}",
                                  "-o", "json")
    nodes = json.loads(listed.stdout)["items"]
    assert nodes, "no fake H100 nodes"
    for node in nodes:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        taints = {(t["key"], t["effect"]) for t in node["spec"]["taints"]}
        assert ("nvidia.com/gpu", "NoSchedule") in taints


def test_kuberay_and_kuberl_crds_are_established(kube_cluster: Cluster) -> None:
    for crd in ("rayjobs.ray.io", "rayclusters.ray.io", "rltrainingjobs.kuberl.io"):
        obj = kube_cluster.get("crd", crd)
        assert obj is not None, f"CRD {crd} is not installed"
        established = {c["type"]: c["status"] for c in obj["status"]["conditions"]}["Established"]
        assert established == "True", crd
