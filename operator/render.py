"""Pure rendering: a validated RLTrainingJob -> the Kubernetes objects that run it, as plain dicts.

Nothing here talks to a cluster or reads the clock or the environment, so ``kuberl render`` prints exactly
what the operator applies, and every field is unit-tested. The operator applies the result with server-side
apply; the children are a ConfigMap (the job and its resolved worker config), the driver's
ServiceAccount/Role/RoleBinding, and one KubeRay RayJob whose embedded Ray cluster has a CPU head and the
``trainer`` and ``rollout`` worker groups (one ``trainer`` group when colocated).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import yaml

from kuberl.api.job import API_VERSION, GROUP, KIND, PLURAL, RLTrainingJob
from kuberl.api.spec import GpuType, RLTrainingJobSpec
from kuberl.operator import labels, names
from kuberl.operator.kueue import queue_of
from kuberl.ray_resources import ROLLOUT_RESOURCE, TRAINER_RESOURCE

RAYJOB_API_VERSION = "ray.io/v1"
CONFIG_MOUNT_PATH = "/etc/kuberl"
JOB_CONFIG_KEY = "job.yaml"
RESOLVED_CONFIG_KEY = "resolved.yaml"
ENTRYPOINT = f"python -m kuberl.worker --config {CONFIG_MOUNT_PATH}/{JOB_CONFIG_KEY}"

# GPU Feature Discovery's `nvidia.com/gpu.product` value per GpuType (`any` selects no product).
GPU_PRODUCTS: dict[GpuType, str] = {
    GpuType.H100: "NVIDIA-H100-80GB-HBM3",
    GpuType.H200: "NVIDIA-H200",
    GpuType.A100: "NVIDIA-A100-SXM4-80GB",
    GpuType.B200: "NVIDIA-B200",
}

# Environment every Ray pod gets; spec.cluster.env wins on a name clash.
DEFAULT_ENV: dict[str, str] = {
    "NCCL_DEBUG": "WARN",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",  # Megatron's TP/SP comm-compute overlap needs in-order kernels
    "PYTHONUNBUFFERED": "1",
    "RAY_DEDUP_LOGS": "0",
}

DEFAULT_WORKER_IMAGE = "kuberl/worker:0.1.0"

HEAD_PORTS = [
    {"name": "gcs-server", "containerPort": 6379},
    {"name": "dashboard", "containerPort": 8265},
    {"name": "client", "containerPort": 10001},
    {"name": "metrics", "containerPort": 8080},
    # The driver's own /metrics (python -m kuberl.worker, default port 9400), scraped by the chart's
    # workers PodMonitor through this port name.
    {"name": "kuberl-metrics", "containerPort": 9400},
]


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide defaults that are not part of a job's spec."""

    default_image: str = DEFAULT_WORKER_IMAGE
    gpus_per_node: int = 8
    head_cpu: str = "4"
    head_memory: str = "16Gi"
    ray_version: str = "2.60.0"
    default_queue_name: str | None = None  # Kueue LocalQueue for jobs that name none (Helm value)
    default_priority_class: str | None = None  # Kueue WorkloadPriorityClass for queued jobs


@dataclass(frozen=True)
class WorkerGroup:
    """One KubeRay worker group: ``replicas`` identical pods with ``gpus_per_pod`` GPUs each."""

    name: str
    role: str
    replicas: int
    gpus_per_pod: int
    ray_resources: dict[str, int]


@dataclass(frozen=True)
class Children:
    """Everything one job owns, in the order it is applied (the RayJob last: it needs the rest)."""

    config_map: dict[str, Any]
    service_account: dict[str, Any]
    role: dict[str, Any]
    role_binding: dict[str, Any]
    rayjob: dict[str, Any]

    def in_apply_order(self) -> list[dict[str, Any]]:
        return [self.config_map, self.service_account, self.role, self.role_binding, self.rayjob]

    def apply_stages(self) -> list[list[dict[str, Any]]]:
        """Objects that may be applied concurrently, stage by stage.

        The RoleBinding waits for its Role: under least-privilege RBAC the apiserver's escalation check
        resolves the referenced Role, so binding a Role that does not exist yet is forbidden. Everything
        else goes at once; the RayJob's pods come much later (KubeRay builds the Ray cluster first).
        """
        return [[self.config_map, self.service_account, self.role, self.rayjob], [self.role_binding]]


def rollout_gpus_per_pod(rollout_gpus: int, gpus_per_engine: int, gpus_per_node: int) -> int:
    """Return the GPUs of each rollout pod: as many as fit a node, holding whole engines, dividing the total.

    Examples: 4 GPUs of 2-GPU engines on 8-GPU nodes -> one pod of 4; 16 -> two pods of 8; engines wider
    than a node (16 GPUs each) -> pods of 8, an engine spanning two pods.
    """
    for per_pod in range(min(gpus_per_node, rollout_gpus), 0, -1):
        whole = per_pod % gpus_per_engine == 0 or gpus_per_engine % per_pod == 0
        if rollout_gpus % per_pod == 0 and whole:
            return per_pod
    raise ValueError(f"no pod size fits {rollout_gpus} rollout GPUs")


def plan_worker_groups(spec: RLTrainingJobSpec, gpus_per_node: int = 8) -> list[WorkerGroup]:
    """Return the worker groups of the Ray cluster: ``trainer`` and ``rollout``, or one colocated group."""
    pl = spec.placement
    per_node = pl.actor_num_gpus_per_node
    if pl.colocate:
        both = {TRAINER_RESOURCE: per_node, ROLLOUT_RESOURCE: per_node}
        return [WorkerGroup("trainer", "trainer-rollout", pl.actor_num_nodes, per_node, both)]
    groups = [
        WorkerGroup("trainer", "trainer", pl.actor_num_nodes, per_node, {TRAINER_RESOURCE: per_node})
    ]
    rollout_gpus = pl.rollout_num_gpus or 0
    if rollout_gpus:
        per_pod = rollout_gpus_per_pod(rollout_gpus, spec.sglang.gpus_per_engine, gpus_per_node)
        groups.append(
            WorkerGroup(
                "rollout", "rollout", rollout_gpus // per_pod, per_pod, {ROLLOUT_RESOURCE: per_pod}
            )
        )
    return groups


def owner_reference(job: RLTrainingJob) -> dict[str, Any] | None:
    """Return the controller ownerReference to the job, or None when it has no uid (not from a cluster)."""
    uid = (job.metadata.model_extra or {}).get("uid")
    if not uid:
        return None
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": job.metadata.name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(job: RLTrainingJob, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    meta["labels"] = labels.common_labels(job.metadata.name, component)
    generation = (job.metadata.model_extra or {}).get("generation")
    if generation is not None:
        meta["annotations"] = {labels.SPEC_GENERATION: str(generation)}
    owner = owner_reference(job)
    if owner:
        meta["ownerReferences"] = [owner]
    return meta


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml: ~20x faster, same output


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False)


def _plain(value: Any) -> Any:
    """Enums and other str-like values -> plain JSON types, so YAML dumps them as scalars."""
    return json.loads(json.dumps(value, default=str))


def job_config(job: RLTrainingJob) -> dict[str, Any]:
    """Return the manifest the worker driver reads: defaults filled, no status, identifying metadata only."""
    manifest = job.to_manifest()
    manifest.pop("status", None)
    meta = {"name": job.metadata.name}
    if job.metadata.namespace:
        meta["namespace"] = job.metadata.namespace
    manifest["metadata"] = meta
    return manifest


def render_config_map(job: RLTrainingJob) -> dict[str, Any]:
    """Return the ConfigMap mounted at /etc/kuberl: ``job.yaml`` and, when available, ``resolved.yaml``."""
    data = {JOB_CONFIG_KEY: _yaml(job_config(job))}
    try:
        from kuberl.api.resolve import resolve
    except ImportError:  # older API package without the resolver: the driver resolves job.yaml itself
        resolve = None
    if resolve is not None:
        data[RESOLVED_CONFIG_KEY] = _yaml(_plain(resolve(job, in_cluster=True).to_dict()))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(job, names.config_map_name(job.metadata.name), "config"),
        "data": data,
    }


def render_driver_rbac(job: RLTrainingJob) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Return the driver's ServiceAccount, Role and RoleBinding: get/patch of this job's status only."""
    name = names.driver_account_name(job.metadata.name)
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(job, name, "driver-rbac"),
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(job, name, "driver-rbac"),
        "rules": [
            {
                "apiGroups": [GROUP],
                "resources": [f"{PLURAL}/status"],
                "resourceNames": [job.metadata.name],
                "verbs": ["get", "patch"],
            }
        ],
    }
    subject: dict[str, Any] = {"kind": "ServiceAccount", "name": name}
    if job.metadata.namespace:
        subject["namespace"] = job.metadata.namespace
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(job, name, "driver-rbac"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [subject],
    }
    return account, role, binding


def _env(job: RLTrainingJob, role: str) -> list[dict[str, Any]]:
    values = {
        "KUBERL_JOB_NAME": job.metadata.name,
        "KUBERL_ROLE": role,
        **DEFAULT_ENV,
        **{e.name: e.value for e in job.spec.cluster.env},
    }
    env: list[dict[str, Any]] = [
        {"name": "KUBERL_JOB_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
    ]
    env += [{"name": k, "value": v} for k, v in values.items() if k != "KUBERL_JOB_NAMESPACE"]
    return env


def _volumes(job: RLTrainingJob, shm_size: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (volumes, volumeMounts): memory-backed /dev/shm, the config, and the storage PVC."""
    cluster = job.spec.cluster
    volumes: list[dict[str, Any]] = [
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}},
        {"name": "kuberl-config", "configMap": {"name": names.config_map_name(job.metadata.name)}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "kuberl-config", "mountPath": CONFIG_MOUNT_PATH, "readOnly": True},
    ]
    if cluster.storage is not None:
        volumes.append(
            {"name": "storage", "persistentVolumeClaim": {"claimName": cluster.storage.claim_name}}
        )
        mounts.append({"name": "storage", "mountPath": cluster.storage.mount_path})
    return volumes, mounts


def gpu_node_selector(job: RLTrainingJob) -> dict[str, str]:
    """Return the node selector of GPU pods: the product label of spec.cluster.gpuType plus extras."""
    selector: dict[str, str] = {}
    product = GPU_PRODUCTS.get(job.spec.cluster.gpu_type)
    if product:
        selector[labels.GPU_PRODUCT] = product
    selector.update(job.spec.cluster.node_selector)
    return selector


def gpu_tolerations(job: RLTrainingJob) -> list[dict[str, Any]]:
    """GPU nodes are commonly tainted ``nvidia.com/gpu``; tolerate it, plus the user's tolerations."""
    base = {"key": labels.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
    return [base, *(dict(t) for t in job.spec.cluster.tolerations if t != base)]


def ray_group_resources(resources: dict[str, int]) -> dict[str, str]:
    """Return a worker group's typed ``resources`` map (KubeRay >= 1.4): Ray custom resources as quantities.

    KubeRay turns it into ``ray start --resources='{...}'`` itself, and still adds ``--num-gpus`` from the
    container's GPU limit. The older route, a JSON string in ``rayStartParams.resources``, needed shell
    escaping that KubeRay 1.5 cannot parse back ("failed to add accelerator resources"), so it is not used.
    """
    return {name: str(amount) for name, amount in sorted(resources.items())}


def _pod_template(
    job: RLTrainingJob, *, role: str, container: str, image: str, gpus: int, settings: RenderSettings
) -> dict[str, Any]:
    cluster = job.spec.cluster
    # The head holds no GPU work: its shared memory (Ray's object store) is bounded by its memory.
    volumes, mounts = _volumes(job, f"{cluster.shm_size_gi}Gi" if gpus else settings.head_memory)
    if gpus:
        amounts = {
            "cpu": str(cluster.cpus_per_gpu * gpus),
            "memory": f"{cluster.memory_per_gpu_gi * gpus}Gi",
            labels.GPU_RESOURCE: str(gpus),
        }
    else:
        amounts = {"cpu": settings.head_cpu, "memory": settings.head_memory}
    main: dict[str, Any] = {
        "name": container,
        "image": image,
        "env": _env(job, role),
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "volumeMounts": mounts,
    }
    if role == "head":
        main["ports"] = [dict(p) for p in HEAD_PORTS]
    pod_spec: dict[str, Any] = {
        "serviceAccountName": names.driver_account_name(job.metadata.name),
        "containers": [main],
        "volumes": volumes,
    }
    if gpus:
        selector = gpu_node_selector(job)
        if selector:
            pod_spec["nodeSelector"] = selector
    # The head tolerates the GPU taint too (it may land on a GPU node, using no GPU): a cluster made of
    # tainted 8-GPU nodes only, like the reference workload's single node, must still run it.
    pod_spec["tolerations"] = gpu_tolerations(job)
    if cluster.priority_class_name:
        pod_spec["priorityClassName"] = cluster.priority_class_name
    pod_labels = {
        labels.MANAGED_BY: labels.MANAGER,
        labels.JOB_NAME: job.metadata.name,
        labels.ROLE: role,
    }
    return {"metadata": {"labels": pod_labels}, "spec": pod_spec}


def render_submitter_template(job: RLTrainingJob, image: str) -> dict[str, Any]:
    """KubeRay's submitter pod (K8sJobMode), with the job's tolerations and priority.

    KubeRay's default submitter tolerates nothing, so on a cluster made only of tainted GPU nodes it never
    schedules and the driver never starts. KubeRay fills in the ``ray job submit`` command itself.
    """
    cluster = job.spec.cluster
    amounts = {"cpu": "1", "memory": "1Gi"}  # KubeRay's own default for the submitter
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",  # a batch/v1 Job's pod must not restart in place
        "containers": [{"name": "ray-job-submitter", "image": image,
                        "resources": {"requests": dict(amounts), "limits": dict(amounts)}}],
        "tolerations": gpu_tolerations(job),
    }
    if cluster.priority_class_name:
        pod_spec["priorityClassName"] = cluster.priority_class_name
    pod_labels = {labels.MANAGED_BY: labels.MANAGER, labels.JOB_NAME: job.metadata.name,
                  labels.ROLE: "submitter"}
    return {"metadata": {"labels": pod_labels}, "spec": pod_spec}


def render_rayjob(job: RLTrainingJob, settings: RenderSettings | None = None) -> dict[str, Any]:
    """Return the KubeRay RayJob (ray.io/v1) that runs the job's driver on a fresh Ray cluster."""
    settings = settings or RenderSettings()
    spec, cluster = job.spec, job.spec.cluster
    image = cluster.image or settings.default_image
    head = {
        "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
        "template": _pod_template(
            job, role="head", container="ray-head", image=image, gpus=0, settings=settings
        ),
    }
    workers = []
    for group in plan_worker_groups(spec, settings.gpus_per_node):
        workers.append(
            {
                "groupName": group.name,
                "replicas": group.replicas,
                "minReplicas": group.replicas,
                "maxReplicas": group.replicas,
                "rayStartParams": {},
                "resources": ray_group_resources(group.ray_resources),
                "template": _pod_template(
                    job,
                    role=group.role,
                    container="ray-worker",
                    image=image,
                    gpus=group.gpus_per_pod,
                    settings=settings,
                ),
            }
        )
    runtime_env = {"env_vars": {"KUBERL_JOB_NAME": job.metadata.name}}
    if job.metadata.namespace:
        runtime_env["env_vars"]["KUBERL_JOB_NAMESPACE"] = job.metadata.namespace
    rayjob_spec: dict[str, Any] = {
        "entrypoint": ENTRYPOINT,
        "runtimeEnvYAML": _yaml(runtime_env),
        "shutdownAfterJobFinishes": True,  # also required for suspend and for Kueue
        "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
        "backoffLimit": cluster.backoff_limit,
        "submitterPodTemplate": render_submitter_template(job, image),
        "rayClusterSpec": {
            "rayVersion": settings.ray_version,
            "enableInTreeAutoscaling": False,
            "headGroupSpec": head,
            "workerGroupSpecs": workers,
        },
    }
    # With a Kueue queue, Kueue owns `suspend`: the RayJob is created suspended (creation_copy) and
    # never applied with the field, and spec.suspend deactivates the Workload instead (operator.kueue).
    queue = queue_of(job, settings.default_queue_name, settings.default_priority_class)
    if queue is None:
        rayjob_spec["suspend"] = spec.suspend
    if cluster.active_deadline_seconds is not None:
        rayjob_spec["activeDeadlineSeconds"] = cluster.active_deadline_seconds
    meta = _metadata(job, names.rayjob_name(job.metadata.name), "rayjob")
    if queue is not None:
        meta["labels"][labels.KUEUE_QUEUE_NAME] = queue.name
        if queue.priority_class:
            meta["labels"][labels.KUEUE_PRIORITY_CLASS] = queue.priority_class
    return {"apiVersion": RAYJOB_API_VERSION, "kind": "RayJob", "metadata": meta, "spec": rayjob_spec}


def creation_copy(rayjob: dict[str, Any]) -> dict[str, Any]:
    """The RayJob as first created: a queued one (Kueue label, no ``suspend`` in the applied spec)
    starts suspended, so nothing runs before Kueue admits the whole gang. It is created with a plain
    POST, not server-side apply, so kuberl's applied field set never contains ``suspend`` and later
    applies cannot unsuspend it; Kueue flips it on admission and eviction."""
    if labels.KUEUE_QUEUE_NAME not in rayjob["metadata"].get("labels", {}):
        return rayjob
    return {**rayjob, "spec": {**rayjob["spec"], "suspend": True}}


def render_children(job: RLTrainingJob, settings: RenderSettings | None = None) -> Children:
    """Return every child object of ``job``."""
    account, role, binding = render_driver_rbac(job)
    return Children(
        config_map=render_config_map(job),
        service_account=account,
        role=role,
        role_binding=binding,
        rayjob=render_rayjob(job, settings),
    )
