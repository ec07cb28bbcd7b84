"""Deterministic child names derived from the RLTrainingJob's name, within Kubernetes and KubeRay limits.

Every child of a job is named here and nowhere else, so a retried or restarted reconcile can never create a
second copy. Names that would exceed a limit are cut and suffixed with a short hash of the full name, so two
long job names that share a prefix still get different children.
"""

from __future__ import annotations

import hashlib

# KubeRay appends "-" + 5 random characters to a RayJob's name for its RayCluster, whose name (a DNS-1035
# label used in Service names) must stay <= 53; hence RayJob names <= 47
# (kuberay ray-operator/controllers/ray/utils/constant.go).
MAX_RAYJOB_NAME = 47
MAX_RAYCLUSTER_NAME = 53
RAYCLUSTER_SUFFIX_LENGTH = 6
# ConfigMaps, ServiceAccounts, Roles and RoleBindings allow 253, but we keep every child a valid label value
# (<= 63) so it can be selected by name in labels too.
MAX_LABEL_VALUE = 63
_HASH_LENGTH = 6

CONFIG_SUFFIX = "-config"
DRIVER_SUFFIX = "-driver"


def fit(base: str, suffix: str, limit: int) -> str:
    """Return ``base + suffix`` if it fits ``limit``, else a cut base + ``-<hash>`` + suffix that does.

    Example: ``fit("a" * 60, "-config", 63)`` -> ``"aaaa…a-1f3a9c-config"`` (exactly 63 characters).
    """
    name = base + suffix
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:_HASH_LENGTH]
    keep = limit - len(suffix) - _HASH_LENGTH - 1
    if keep < 1:
        raise ValueError(f"suffix {suffix!r} leaves no room for a name within {limit} characters")
    head = base[:keep].rstrip("-")
    return f"{head}-{digest}{suffix}"


def rayjob_name(job_name: str) -> str:
    """The RayJob: the job's own name (<= 47 characters, as the CRD enforces), else a hashed cut."""
    return fit(job_name, "", MAX_RAYJOB_NAME)


def config_map_name(job_name: str) -> str:
    """The ConfigMap holding the job manifest and the resolved worker config, e.g. ``glm4-config``."""
    return fit(job_name, CONFIG_SUFFIX, MAX_LABEL_VALUE)


def driver_account_name(job_name: str) -> str:
    """The ServiceAccount, Role and RoleBinding of the worker driver, e.g. ``glm4-driver``."""
    return fit(job_name, DRIVER_SUFFIX, MAX_LABEL_VALUE)

