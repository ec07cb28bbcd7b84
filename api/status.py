"""RLTrainingJob status: phase, conditions, the RayJob it runs as, and the driver's progress."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from kuberl.api.base import StatusModel


class Phase(StrEnum):
    """Where the job stands; the operator folds the RayJob state and driver progress into one of these."""

    PENDING = "Pending"  # accepted, children not created yet
    QUEUED = "Queued"  # waiting for Kueue admission (RayJob suspended by the queue)
    STARTING = "Starting"  # Ray cluster provisioning or the driver not running yet
    RUNNING = "Running"
    RESTARTING = "Restarting"  # KubeRay retrying on a fresh cluster (backoffLimit)
    SUSPENDED = "Suspended"  # the user set spec.suspend
    SUCCEEDED = "Succeeded"
    STOPPED = "Stopped"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        """Terminal phases never change again (the operator stops recreating children)."""
        return self in (Phase.SUCCEEDED, Phase.STOPPED, Phase.FAILED)


class ConditionType(StrEnum):
    CREATED = "Created"
    ADMITTED = "Admitted"
    CLUSTER_READY = "ClusterReady"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Condition(StatusModel):
    """A metav1.Condition."""

    type: str = Field(..., description="Condition type, e.g. Running.")
    status: str = Field(..., pattern=r"^(True|False|Unknown)$", description="True, False or Unknown.")
    reason: str = Field("", description="CamelCase reason.")
    message: str = Field("", description="Human-readable detail.")
    last_transition_time: str | None = Field(None, description="RFC 3339 time of the last change.")
    observed_generation: int | None = Field(None, description="Generation this was computed for.")


class Progress(StatusModel):
    """What the worker driver reports after each rollout (it patches rltrainingjobs/status)."""

    rollout_id: int | None = Field(None, description="Last completed rollout (0-based).")
    num_rollout: int | None = Field(None, description="Total rollouts planned.")
    last_reward: float | None = Field(None, description="Mean raw reward of the last rollout.")
    last_eval_score: float | None = Field(None, description="Mean score of the last evaluation.")
    last_checkpoint: str | None = Field(None, description="Path of the last saved checkpoint.")
    weight_version: int | None = Field(None, description="Weight version the engines serve.")
    updated_at: str | None = Field(None, description="RFC 3339 time of the last report.")


class RLTrainingJobStatus(StatusModel):
    """Observed state. Unknown keys are kept: kopf stores its own bookkeeping under status.kopf."""

    phase: Phase | None = Field(None, description="Pending, Queued, Starting, Running, ...")
    reason: str | None = Field(None, description="Reason for the current phase.")
    message: str | None = Field(None, description="Detail for the current phase.")
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions.")
    observed_generation: int | None = Field(None, description="Spec generation last reconciled.")
    ray_job_name: str | None = Field(None, description="The child RayJob.")
    ray_cluster_name: str | None = Field(None, description="The Ray cluster KubeRay created.")
    dashboard_url: str | None = Field(None, alias="dashboardURL", description="Ray dashboard.")
    restarts: int | None = Field(None, description="RayJob retries so far.")
    rollout: str | None = Field(None, description="Progress as 'done/total' for kubectl get.")
    progress: Progress | None = Field(None, description="Training progress from the driver.")
