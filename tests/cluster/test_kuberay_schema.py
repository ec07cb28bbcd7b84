"""A RayJob shaped like kuberl's (head + trainer group with 4 GPUs per pod + rollout group) is
validated by KubeRay's real CRD schema (v1.5.0, from the ray-operator Go module); broken variants
are rejected."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from kuberl.devcluster import FAKE_NODE_TOLERATIONS, GPU_PRODUCT, Cluster

pytestmark = pytest.mark.cluster


HEAD_PORTS = [{"containerPort": 6379, "name": "gcs"},
              {"containerPort": 8265, "name": "dashboard"},
              {"containerPort": 10001, "name": "client"},
              {"containerPort": 8080, "name": "metrics"}]


def _pod(container: str, image: str, gpus: int, cpu: str, memory: str) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    return {
        "spec": {
            "containers": [{
                "name": container, "image": image,
                "ports": HEAD_PORTS if container == "ray-head" else [],
                "resources": {"limits": limits, "requests": limits},
                "env": [{"name": "NCCL_SOCKET_IFNAME", "value": "eth0"}],
                "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                                 {"name": "job-config", "mountPath": "/config"}],
            }],
            "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory"}},
                        {"name": "job-config", "configMap": {"name": "glm-z1-config"}}],
            "nodeSelector": {"nvidia.com/gpu.product": GPU_PRODUCT} if gpus else {},
            "tolerations": copy.deepcopy(FAKE_NODE_TOLERATIONS),
        },
    }


def realistic_rayjob(name: str = "glm-z1-grpo") -> dict[str, Any]:
    """The reference workload on one 8×H100 node: 4 trainer GPUs and 4 rollout GPUs."""
    group = {"replicas": 1, "minReplicas": 1, "maxReplicas": 1, "numOfHosts": 1}
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": name, "namespace": "default",
                     "labels": {"app.kubernetes.io/managed-by": "kuberl"}},
        "spec": {
            "entrypoint": "python -m kuberl.worker.main --config /config/job.yaml",
            "submissionMode": "K8sJobMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "backoffLimit": 2,
            "activeDeadlineSeconds": 86400,
            "runtimeEnvYAML": "env_vars:\n  RAY_AUTH_MODE: token\n",
            "rayClusterSpec": {
                "rayVersion": "2.60.0",
                "enableInTreeAutoscaling": False,
                "headGroupSpec": {
                    "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                    "template": _pod("ray-head", "kuberl/worker:test", 0, "8", "32Gi"),
                },
                "workerGroupSpecs": [
                    {**group, "groupName": "trainer", "rayStartParams": {},
                     "resources": {"trainer_slot": "1"},
                     "template": _pod("ray-worker", "kuberl/megatron:test", 4, "96", "900Gi")},
                    {**group, "groupName": "rollout", "rayStartParams": {},
                     "resources": {"rollout_slot": "1"},
                     "template": _pod("ray-worker", "kuberl/sglang:test", 4, "96", "900Gi")},
                ],
            },
        },
    }


def _groups(job: dict[str, Any]) -> list[dict[str, Any]]:
    return job["spec"]["rayClusterSpec"]["workerGroupSpecs"]


def _drop_group_name(job: dict[str, Any]) -> None:
    del _groups(job)[0]["groupName"]


def _gpu_count_as_word(job: dict[str, Any]) -> None:
    container = _groups(job)[0]["template"]["spec"]["containers"][0]
    container["resources"]["limits"]["nvidia.com/gpu"] = "four"


def _replicas_as_text(job: dict[str, Any]) -> None:
    _groups(job)[1]["replicas"] = "one"


def _legacy_and_new_deletion_policy(job: dict[str, Any]) -> None:
    job["spec"]["deletionStrategy"] = {
        "onSuccess": {"policy": "DeleteCluster"},
        "deletionRules": [{"policy": "DeleteCluster", "condition": {"jobStatus": "SUCCEEDED"}}],
    }


BROKEN: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("worker-group-without-groupName", _drop_group_name, "groupName: Required value"),
    ("gpu-limit-not-a-quantity", _gpu_count_as_word, "nvidia.com/gpu"),
    ("replicas-not-an-integer", _replicas_as_text, "replicas"),
    ("legacy-and-new-deletion-policy", _legacy_and_new_deletion_policy,
     "cannot be used together within the same deletionStrategy"),
]


def dry_run(cluster: Cluster, job: dict[str, Any]) -> tuple[int, str]:
    proc = cluster.kubectl("create", "--dry-run=server", "-f", "-", input=yaml.safe_dump(job),
                           check=False)
    return proc.returncode, proc.stderr


def test_realistic_rayjob_is_accepted_by_kuberay_schema(kube_cluster: Cluster) -> None:
    rc, err = dry_run(kube_cluster, realistic_rayjob())
    assert rc == 0, err


@pytest.mark.parametrize(("case", "breaks", "message"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_rayjob_is_rejected(kube_cluster: Cluster, case: str,
                                   breaks: Callable[[dict[str, Any]], None], message: str) -> None:
    job = realistic_rayjob()
    breaks(job)
    rc, err = dry_run(kube_cluster, job)
    assert rc != 0, f"{case} was accepted"
    assert message in err, err
