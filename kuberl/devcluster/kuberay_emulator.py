"""Plays the KubeRay operator's part against the local control plane: for a RayJob it creates the
RayCluster and its pods (names, labels and owner references as KubeRay v1.5 makes them) and
writes RayJob and RayCluster status through the status subresource, step by step as KubeRay
would.

Why: Ray never runs on kwok's fake nodes, so even a real KubeRay operator never moves a RayJob
past ``Initializing``. With this, operator tests drive every RayJob state deterministically while
the real apiserver, garbage collector, scheduler and kwok handle the objects.
"""

from __future__ import annotations

import copy
import json
import secrets
import string
import time
from datetime import UTC, datetime
from typing import Any

from kuberl.devcluster.cluster import Cluster
from kuberl.devcluster.nodes import FAKE_NODE_TOLERATIONS
from kuberl.errors import ClusterError

_ALPHABET = string.ascii_lowercase + string.digits


def _suffix() -> str:
    """KubeRay's 5-character random suffix (``rand.String(5)``)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(5))


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owner_ref(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def pod_labels(cluster_name: str, group: str | None) -> dict[str, str]:
    """The labels KubeRay puts on every Ray pod; ``group`` None means the head (group
    ``headgroup``)."""
    node_type = "head" if group is None else "worker"
    return {
        "ray.io/cluster": cluster_name,
        "ray.io/node-type": node_type,
        "ray.io/group": group or "headgroup",
        "ray.io/identifier": f"{cluster_name}-{node_type}",
        "ray.io/is-ray-node": "yes",
        "app.kubernetes.io/created-by": "kuberay-operator",
        "app.kubernetes.io/name": "kuberay",
    }


def ray_pod(cluster_name: str, namespace: str, template: dict[str, Any], group: str | None,
            owner: dict[str, Any]) -> dict[str, Any]:
    """A pod from a group's template, named ``<cluster>-head-xxxxx`` or
    ``<cluster>-<group>-worker-xxxxx``; the fake-node tolerations are added so kwok's nodes
    accept it."""
    spec = copy.deepcopy(template.get("spec", {}))
    tolerations = spec.setdefault("tolerations", [])
    tolerations.extend(t for t in FAKE_NODE_TOLERATIONS if t not in tolerations)
    meta = copy.deepcopy(template.get("metadata", {}))
    prefix = f"{cluster_name}-head-" if group is None else f"{cluster_name}-{group}-worker-"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": prefix + _suffix(), "namespace": namespace,
            "labels": {**meta.get("labels", {}), **pod_labels(cluster_name, group)},
            "annotations": meta.get("annotations", {}),
            "ownerReferences": [_owner_ref(owner)],
        },
        "spec": spec,
    }


def _gpus(template: dict[str, Any]) -> int:
    total = 0
    for container in template.get("spec", {}).get("containers", []):
        limits = container.get("resources", {}).get("limits", {})
        total += int(limits.get("nvidia.com/gpu", 0))
    return total


class KubeRayEmulator:
    """KubeRay's reconcile steps for RayJobs, triggered explicitly by the test."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def _rayjob(self, namespace: str, name: str) -> dict[str, Any]:
        job = self.cluster.get("rayjob", name, namespace)
        if job is None:
            raise ClusterError(f"RayJob {namespace}/{name} does not exist")
        return job

    def _patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.cluster.kubectl("patch", kind, name, "-n", namespace, "--subresource=status",
                             "--type=merge", "-p", json.dumps({"status": status}))

    def set_status(self, namespace: str, name: str, **fields: Any) -> None:
        """Merge-patch arbitrary RayJob status fields (camelCase names, as KubeRay writes them)."""
        self._patch_status("rayjob", namespace, name, fields)

    def provision(self, namespace: str, name: str, *, wait_running: bool = True,
                  timeout: float = 60.0) -> str:
        """Initializing: create the RayCluster and its pods; with ``wait_running``, wait until kwok
        reports every pod Running and mark the cluster ready. Returns the RayCluster's name."""
        job = self._rayjob(namespace, name)
        status = job.get("status") or {}
        cluster_name = status.get("rayClusterName") or f"{name}-{_suffix()}"
        job_id = status.get("jobId") or f"{name}-{_suffix()}"
        # Record the child's name before creating it, as KubeRay does: a retry cannot duplicate it.
        self.set_status(namespace, name, jobDeploymentStatus="Initializing",
                        rayClusterName=cluster_name, jobId=job_id,
                        startTime=status.get("startTime") or _now(),
                        dashboardURL=f"{cluster_name}-head-svc.{namespace}.svc.cluster.local:8265")
        spec = job["spec"]["rayClusterSpec"]
        raycluster = {
            "apiVersion": "ray.io/v1", "kind": "RayCluster",
            "metadata": {"name": cluster_name, "namespace": namespace,
                         "labels": {"ray.io/originated-from-crd": "RayJob",
                                    "ray.io/originated-from-cr-name": name},
                         "ownerReferences": [_owner_ref(job)]},
            "spec": spec,
        }
        if self.cluster.get("raycluster", cluster_name, namespace) is None:
            self.cluster.kubectl("create", "-f", "-", input=json.dumps(raycluster))
        raycluster = self.cluster.get("raycluster", cluster_name, namespace)
        assert raycluster is not None

        head = spec["headGroupSpec"]["template"]
        pods = [ray_pod(cluster_name, namespace, head, None, raycluster)]
        desired_workers, desired_gpus = 0, _gpus(spec["headGroupSpec"]["template"])
        for group in spec.get("workerGroupSpecs", []):
            count = int(group.get("replicas", 1)) * int(group.get("numOfHosts", 1))
            desired_workers += count
            desired_gpus += count * _gpus(group["template"])
            pods += [ray_pod(cluster_name, namespace, group["template"], group["groupName"],
                             raycluster) for _ in range(count)]
        existing = self.cluster.kubectl("get", "pods", "-n", namespace, "-l",
                                        f"ray.io/cluster={cluster_name}", "-o", "name").stdout
        if not existing.split():
            self.cluster.kubectl("create", "-f", "-",
                                 input="\n---\n".join(json.dumps(p) for p in pods))
        self._patch_status("raycluster", namespace, cluster_name, {
            "desiredWorkerReplicas": desired_workers, "desiredGPU": str(desired_gpus),
            "readyWorkerReplicas": 0, "availableWorkerReplicas": 0})
        if wait_running:
            self.wait_pods_running(namespace, cluster_name, len(pods), timeout)
            self._cluster_ready(namespace, name, cluster_name, desired_workers, desired_gpus)
        return cluster_name

    def wait_pods_running(self, namespace: str, cluster_name: str, count: int,
                          timeout: float) -> None:
        deadline = time.monotonic() + timeout
        phases: list[str] = []
        while time.monotonic() < deadline:
            items = json.loads(self.cluster.kubectl(
                "get", "pods", "-n", namespace, "-l", f"ray.io/cluster={cluster_name}",
                "-o", "json").stdout)["items"]
            phases = [p.get("status", {}).get("phase", "") for p in items]
            if len(phases) >= count and all(p == "Running" for p in phases):
                return
            time.sleep(0.2)
        raise ClusterError(f"RayCluster {namespace}/{cluster_name}: pods not Running after "
                           f"{timeout} s "
                           f"(phases {phases}); do the fake nodes have free nvidia.com/gpu?")

    def _cluster_ready(self, namespace: str, name: str, cluster_name: str, workers: int,
                       gpus: int) -> None:
        now = _now()
        conditions = [
            {"type": "HeadPodReady", "status": "True", "reason": "HeadPodRunningAndReady",
             "message": "", "lastTransitionTime": now},
            {"type": "RayClusterProvisioned", "status": "True",
             "reason": "AllPodRunningAndReadyFirstTime", "message": "", "lastTransitionTime": now},
        ]
        cluster_status = {"state": "ready", "readyWorkerReplicas": workers,
                          "availableWorkerReplicas": workers, "desiredWorkerReplicas": workers,
                          "desiredGPU": str(gpus), "conditions": conditions,
                          "head": {"podIP": "10.244.0.2", "serviceIP": "10.0.0.10"}}
        self._patch_status("raycluster", namespace, cluster_name, cluster_status)
        self.set_status(namespace, name, rayClusterStatus=cluster_status)

    def start_job(self, namespace: str, name: str, job_status: str = "RUNNING") -> None:
        """Running: the submitter has handed the entrypoint to Ray (``PENDING`` first, then
        ``RUNNING``)."""
        self.set_status(namespace, name, jobDeploymentStatus="Running", jobStatus=job_status)

    def finish(self, namespace: str, name: str, job_status: str = "SUCCEEDED", message: str = "",
               *, delete_cluster: bool = False) -> None:
        """Terminal: ``SUCCEEDED``/``STOPPED`` → Complete, ``FAILED`` → Failed with reason
        AppFailed. ``delete_cluster`` mimics ``shutdownAfterJobFinishes`` (the RayCluster, and by
        GC its pods, go)."""
        fields: dict[str, Any] = {"jobStatus": job_status, "endTime": _now(), "message": message}
        if job_status == "FAILED":
            fields |= {"jobDeploymentStatus": "Failed", "reason": "AppFailed"}
        else:
            fields |= {"jobDeploymentStatus": "Complete"}
        self.set_status(namespace, name, **fields)
        if delete_cluster:
            cluster_name = (self._rayjob(namespace, name).get("status") or {}).get("rayClusterName")
            if cluster_name:
                self.cluster.kubectl("delete", "raycluster", cluster_name, "-n", namespace,
                                     "--wait=false", check=False)
