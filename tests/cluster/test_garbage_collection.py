"""The controller manager's garbage collector really runs: deleting an owner removes its dependents,
the mechanism the operator relies on (RLTrainingJob → RayJob → RayCluster → pods) instead of
delete handlers."""

from __future__ import annotations

import time
import uuid

import pytest

from kuberl.devcluster import Cluster

pytestmark = pytest.mark.cluster


def _wait_gone(cluster: Cluster, kind: str, name: str, timeout: float = 30.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cluster.get(kind, name, "default") is None:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{kind}/{name} still exists {timeout:.0f} s after its owner was deleted")


@pytest.mark.parametrize("propagation", ["background", "foreground"])
def test_deleting_owner_garbage_collects_owned_configmap(kube_cluster: Cluster,
                                                          propagation: str) -> None:
    owner_name, child_name = f"owner-{uuid.uuid4().hex[:6]}", f"child-{uuid.uuid4().hex[:6]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": owner_name, "namespace": "default"}})
    owner = kube_cluster.get("configmap", owner_name, "default")
    assert owner is not None
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": owner_name,
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    kube_cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": child_name, "namespace": "default",
                                     "ownerReferences": [ref]},
                        "data": {"k": "v"}})
    bystander = f"bystander-{uuid.uuid4().hex[:6]}"
    kube_cluster.apply({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": bystander, "namespace": "default"}})

    kube_cluster.kubectl("delete", "configmap", owner_name, "-n", "default",
                         f"--cascade={propagation}", "--wait=false")
    _wait_gone(kube_cluster, "configmap", child_name)
    assert kube_cluster.get("configmap", bystander, "default") is not None, "GC took a bystander"
    kube_cluster.kubectl("delete", "configmap", bystander, "-n", "default")
