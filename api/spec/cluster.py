"""spec.cluster: where the pods run (GPU type, image, storage, queue) and KubeRay job settings."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import Field

from kuberl.api.base import SpecModel


class GpuType(StrEnum):
    """Known GPU products; each maps to a node-selector value of ``nvidia.com/gpu.product``."""

    H100 = "H100"
    H200 = "H200"
    A100 = "A100"
    B200 = "B200"
    ANY = "any"


class StorageSpec(SpecModel):
    """A PersistentVolumeClaim mounted into every pod (checkpoints, data)."""

    claim_name: str = Field(..., pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=253,
                            description="PVC name in the job's namespace.")
    mount_path: str = Field("/data", pattern=r"^/", description="Mount path in the pods.")


class EnvVar(SpecModel):
    name: str = Field(..., pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="Variable name.")
    value: str = Field("", description="Value.")


class ClusterSpec(SpecModel):
    """Kubernetes placement; ignored by ``kuberl train`` on a laptop."""

    gpu_type: GpuType = Field(GpuType.H100, description="GPU product the pods must land on.")
    image: str | None = Field(
        None, min_length=1, description="Worker image; default: the operator's configured image."
    )
    storage: StorageSpec | None = Field(None, description="Shared volume for data and checkpoints.")
    queue_name: str | None = Field(
        None, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", max_length=63,
        description="Kueue LocalQueue; labels the RayJob for gang admission.",
    )
    priority_class_name: str | None = Field(None, min_length=1, description="Pod priority class.")
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Extra node labels the GPU pods require."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Extra tolerations for GPU pods (nvidia.com/gpu is always tolerated).",
    )
    env: list[EnvVar] = Field(default_factory=list, description="Extra environment (e.g. NCCL_*).")
    cpus_per_gpu: int = Field(8, ge=1, description="CPU cores requested per GPU.")
    memory_per_gpu_gi: int = Field(96, ge=1, description="Memory (GiB) requested per GPU.")
    shm_size_gi: int = Field(64, ge=1, description="Size of the memory-backed /dev/shm per pod.")
    backoff_limit: int = Field(0, ge=0, le=100, description="RayJob retries on a fresh cluster.")
    active_deadline_seconds: int | None = Field(None, ge=1, description="Fail the job after this.")
    ttl_seconds_after_finished: int = Field(0, ge=0, description="Keep the Ray cluster after the end.")
