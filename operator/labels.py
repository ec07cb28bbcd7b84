"""Label and annotation keys kuberl puts on (or reads from) the objects it manages; one home for all."""

from __future__ import annotations

from kuberl.api.job import GROUP

JOB_NAME = f"{GROUP}/job-name"
"""Names the owning RLTrainingJob on every child and on the RayJob's pods, e.g. ``kuberl.io/job-name: glm4``."""

COMPONENT = f"{GROUP}/component"
"""What a child is for: ``config``, ``rayjob`` or ``driver-rbac``, e.g. ``kuberl.io/component: rayjob``."""

ROLE = f"{GROUP}/role"
"""The job role a pod plays: ``head``, ``trainer``, ``rollout`` or ``trainer-rollout`` (colocated),
e.g. ``kuberl.io/role: rollout``."""

MANAGED_BY = "app.kubernetes.io/managed-by"
"""Standard label; ``app.kubernetes.io/managed-by: kuberl`` selects everything the operator owns."""
MANAGER = "kuberl"
"""The value of MANAGED_BY, and the server-side-apply field manager."""

PART_OF = "app.kubernetes.io/part-of"
"""``app.kubernetes.io/part-of: kuberl``."""

KUEUE_QUEUE_NAME = "kueue.x-k8s.io/queue-name"
"""Kueue LocalQueue of the RayJob (gang admission), e.g. ``kueue.x-k8s.io/queue-name: h100-team``."""

KUEUE_PRIORITY_CLASS = "kueue.x-k8s.io/priority-class"
"""Kueue WorkloadPriorityClass, copied from the job's label of the same key when present."""

GPU_PRODUCT = "nvidia.com/gpu.product"
"""GPU Feature Discovery node label, e.g. ``nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3``."""

GPU_RESOURCE = "nvidia.com/gpu"
"""The device plugin's extended resource, and the taint key of GPU nodes (tolerated with Exists)."""

SPEC_GENERATION = f"{GROUP}/spec-generation"
"""Annotation on children: the RLTrainingJob ``metadata.generation`` they were rendered from,
e.g. ``kuberl.io/spec-generation: "3"``."""

KOPF_PREFIX = GROUP
"""Prefix of kopf's own annotations (``kuberl.io/last-handled-configuration``)."""

FINALIZER = f"{GROUP}/finalizer"
"""Finalizer name kopf would use; kuberl has no delete handler, so it is normally never added."""


def common_labels(job_name: str, component: str) -> dict[str, str]:
    """Return the labels every child of ``job_name`` carries."""
    return {
        MANAGED_BY: MANAGER,
        PART_OF: MANAGER,
        JOB_NAME: job_name,
        COMPONENT: component,
    }
