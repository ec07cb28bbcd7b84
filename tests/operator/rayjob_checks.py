"""Field-by-field checks of a rendered (or stored) RayJob against the job's spec.

Shared by the pure render tests and the cluster tests, which apply the real examples and read the RayJob
back from the apiserver. The expectations are derived from the spec's arithmetic, not from render.py.
"""

from __future__ import annotations

from typing import Any

from kuberl.api import RLTrainingJob

GPU = "nvidia.com/gpu"


def groups_by_name(rayjob: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["groupName"]: g for g in rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"]}


def container(group: dict[str, Any]) -> dict[str, Any]:
    return group["template"]["spec"]["containers"][0]


def gpus(group: dict[str, Any]) -> int:
    limits = container(group)["resources"]["limits"]
    assert container(group)["resources"]["requests"][GPU] == limits[GPU], "GPU requests != limits"
    return int(limits[GPU])


def ray_resources(group: dict[str, Any]) -> dict[str, int]:
    """The group's Ray custom resources, from KubeRay's typed ``resources`` map (quantity strings).

    ``rayStartParams.resources`` must stay unset: KubeRay 1.5 cannot parse the shell-escaped JSON there.
    """
    assert "resources" not in group.get("rayStartParams", {}), group["rayStartParams"]
    return {name: int(quantity) for name, quantity in group["resources"].items()}


def check_rayjob(rayjob: dict[str, Any], job: RLTrainingJob, *, default_image: str) -> None:
    """Assert every field the issue names: groups, GPUs, images, volumes, selectors, labels, lifecycle."""
    spec, pl, cluster = job.spec, job.spec.placement, job.spec.cluster
    meta, rj = rayjob["metadata"], rayjob["spec"]
    assert rayjob["apiVersion"] == "ray.io/v1" and rayjob["kind"] == "RayJob"
    assert len(meta["name"]) <= 47
    assert meta["labels"]["kuberl.io/job-name"] == job.metadata.name
    assert meta["labels"]["app.kubernetes.io/managed-by"] == "kuberl"
    assert meta["labels"].get("kueue.x-k8s.io/queue-name") == cluster.queue_name
    assert rj["shutdownAfterJobFinishes"] is True
    assert rj["backoffLimit"] == cluster.backoff_limit
    assert rj.get("suspend", False) == spec.suspend
    assert rj["entrypoint"].startswith("python -m kuberl.worker --config /etc/kuberl/")

    rc = rj["rayClusterSpec"]
    assert rc.get("enableInTreeAutoscaling", False) is False
    head = rc["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert GPU not in container(head)["resources"].get("limits", {})

    groups = groups_by_name(rayjob)
    trainer = groups["trainer"]
    assert trainer["replicas"] == pl.actor_num_nodes
    assert trainer["minReplicas"] == trainer["maxReplicas"] == trainer["replicas"]
    assert gpus(trainer) == pl.actor_num_gpus_per_node
    assert ray_resources(trainer)["kuberl_trainer"] == pl.actor_num_gpus_per_node
    if pl.colocate:
        assert set(groups) == {"trainer"}
        assert ray_resources(trainer)["kuberl_rollout"] == pl.actor_num_gpus_per_node
    else:
        assert set(groups) == {"trainer", "rollout"}
        rollout = groups["rollout"]
        per_pod, engine = gpus(rollout), spec.sglang.gpus_per_engine
        assert rollout["replicas"] * per_pod == pl.rollout_num_gpus
        assert per_pod <= 8 and (per_pod % engine == 0 or engine % per_pod == 0)
        assert ray_resources(rollout) == {"kuberl_rollout": per_pod}
        assert "kuberl_trainer" not in ray_resources(rollout)

    image = cluster.image or default_image
    for name, group in [("head", head), *groups.items()]:
        pod = group["template"]["spec"]
        main = pod["containers"][0]
        assert main["image"] == image, name
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        assert "configMap" in volumes[mounts["/etc/kuberl"]]
        if cluster.storage:
            pvc = volumes[mounts[cluster.storage.mount_path]]["persistentVolumeClaim"]
            assert pvc["claimName"] == cluster.storage.claim_name
        env = {e["name"]: e for e in main["env"]}
        assert env["KUBERL_JOB_NAME"]["value"] == job.metadata.name
        assert "KUBERL_JOB_NAMESPACE" in env
        assert pod["serviceAccountName"].endswith("-driver")
        if name == "head":
            assert "nodeSelector" not in pod
            continue
        if cluster.gpu_type.value == "H100":
            assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        for key, value in cluster.node_selector.items():
            assert pod["nodeSelector"][key] == value
        assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        for var in cluster.env:
            assert env[var.name]["value"] == var.value
