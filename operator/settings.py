"""Operator configuration (flags and environment) and the kopf settings kuberl relies on."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import kopf

from kuberl.operator import labels
from kuberl.operator.render import DEFAULT_WORKER_IMAGE, RenderSettings


@dataclass(frozen=True)
class OperatorConfig:
    """What ``kuberl operator`` was started with."""

    namespaces: tuple[str, ...] = ()  # empty: cluster-wide
    metrics_port: int = 8080  # 0 disables /metrics
    metrics_addr: str = "0.0.0.0"
    worker_image: str = DEFAULT_WORKER_IMAGE
    resync_seconds: float = 30.0  # how often every job's RayJob is re-read (level-triggered)
    kubeconfig: str | None = None  # None: in-cluster, else $KUBECONFIG / ~/.kube/config
    liveness_endpoint: str | None = None  # e.g. http://0.0.0.0:8081/healthz
    max_concurrent_reconciles: int = 16
    default_queue_name: str | None = None  # Kueue LocalQueue for jobs that name none
    default_priority_class: str | None = None  # Kueue WorkloadPriorityClass for queued jobs

    @classmethod
    def from_env(cls) -> OperatorConfig:
        """Defaults overridden by KUBERL_* variables (used when kopf loads the handlers itself)."""
        namespaces = os.environ.get("KUBERL_NAMESPACES", "")
        return cls(
            namespaces=tuple(n for n in namespaces.split(",") if n),
            metrics_port=int(os.environ.get("KUBERL_METRICS_PORT", "8080")),
            worker_image=os.environ.get("KUBERL_WORKER_IMAGE", DEFAULT_WORKER_IMAGE),
            resync_seconds=float(os.environ.get("KUBERL_RESYNC_SECONDS", "30")),
            kubeconfig=os.environ.get("KUBECONFIG") or None,
            default_queue_name=os.environ.get("KUBERL_DEFAULT_QUEUE_NAME") or None,
            default_priority_class=os.environ.get("KUBERL_DEFAULT_PRIORITY_CLASS") or None,
        )

    def render_settings(self) -> RenderSettings:
        return RenderSettings(default_image=self.worker_image,
                              default_queue_name=self.default_queue_name,
                              default_priority_class=self.default_priority_class)


def configure_kopf(settings: kopf.OperatorSettings) -> None:
    """Keep kopf's bookkeeping under kuberl's own names, and bound how long a stalled watch can hang."""
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=labels.KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = labels.FINALIZER
    settings.watching.client_timeout = 300
    settings.watching.server_timeout = 270
    # kopf turns its own log lines at this level or above into Events; ours are posted explicitly.
    settings.posting.level = logging.WARNING
    settings.networking.request_timeout = 30
