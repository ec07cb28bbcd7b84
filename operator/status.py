"""Pure status folding: the job, its RayJob (or none) and the time -> the RLTrainingJob status to show.

KubeRay's RayJob has two state fields: ``jobDeploymentStatus`` (KubeRay's view of the cluster and submission)
and ``jobStatus`` (Ray's view of the driver). ``phase_of`` maps the pair onto our ``Phase`` as the table in
``kubernetes-notes.md`` section 3 does; ``fold_status`` adds conditions with stable transition times, and
``status_patch`` returns only what changed, leaving ``progress`` (written by the driver) untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kuberl.api.job import RLTrainingJob
from kuberl.api.status import Condition, ConditionType, Phase, RLTrainingJobStatus
from kuberl.operator import names


class DeploymentStatus(StrEnum):
    """KubeRay ``status.jobDeploymentStatus``; only Complete and Failed are terminal."""

    NEW = ""
    INITIALIZING = "Initializing"
    WAITING = "Waiting"
    RUNNING = "Running"
    COMPLETE = "Complete"
    FAILED = "Failed"
    VALIDATION_FAILED = "ValidationFailed"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    RETRYING = "Retrying"


class RayJobStatus(StrEnum):
    """Ray's ``status.jobStatus`` of the submitted driver."""

    NEW = ""
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class RayJobView:
    """The fields of a RayJob's status that the fold reads; unknown values read as empty."""

    deployment: str = ""
    job_status: str = ""
    reason: str = ""
    message: str = ""
    dashboard_url: str | None = None
    cluster_name: str | None = None
    failed: int = 0
    cluster_provisioned: bool | None = None

    @classmethod
    def of(cls, rayjob: dict[str, Any]) -> RayJobView:
        status = rayjob.get("status") or {}
        cluster = status.get("rayClusterStatus") or {}
        provisioned: bool | None = None
        for cond in cluster.get("conditions") or []:
            if cond.get("type") == "RayClusterProvisioned":
                provisioned = cond.get("status") == "True"
        if provisioned is None and cluster.get("state"):
            provisioned = cluster["state"] == "ready"
        deployment = status.get("jobDeploymentStatus") or ""
        if provisioned is None and deployment in (DeploymentStatus.RUNNING, DeploymentStatus.COMPLETE):
            provisioned = True  # KubeRay leaves Initializing only once its Ray cluster is ready
        return cls(
            deployment=status.get("jobDeploymentStatus") or "",
            job_status=status.get("jobStatus") or "",
            reason=status.get("reason") or "",
            message=status.get("message") or "",
            dashboard_url=status.get("dashboardURL") or None,
            cluster_name=status.get("rayClusterName") or None,
            failed=int(status.get("failed") or 0),
            cluster_provisioned=provisioned,
        )


@dataclass(frozen=True)
class PhaseDecision:
    phase: Phase
    reason: str
    message: str


def phase_of(view: RayJobView | None, *, suspend: bool, queued: bool = False) -> PhaseDecision:
    """Map a RayJob state onto our phase, with the reason and message to show beside it.

    ``suspend`` is the job's spec.suspend (a user suspension); without it a suspended RayJob is waiting for
    Kueue (``queued`` says a queue is named), which we show as Queued.
    """
    if view is None:
        return PhaseDecision(Phase.PENDING, "RayJobNotCreated", "the RayJob has not been created yet")
    d, j = view.deployment, view.job_status
    if d in (DeploymentStatus.SUSPENDED, DeploymentStatus.SUSPENDING):
        if suspend:
            return PhaseDecision(Phase.SUSPENDED, "Suspended", "suspended by spec.suspend")
        return PhaseDecision(
            Phase.QUEUED, "WaitingForAdmission",
            "the RayJob is suspended until its queue admits it" if queued else "the RayJob is suspended",
        )
    if d in (DeploymentStatus.FAILED, DeploymentStatus.VALIDATION_FAILED):
        reason = view.reason or ("ValidationFailed" if d == DeploymentStatus.VALIDATION_FAILED else "")
        return PhaseDecision(Phase.FAILED, reason or "RayJobFailed", view.message or "the RayJob failed")
    if d == DeploymentStatus.COMPLETE:
        if j == RayJobStatus.SUCCEEDED:
            return PhaseDecision(Phase.SUCCEEDED, "Succeeded", "the training driver finished")
        if j == RayJobStatus.STOPPED:
            return PhaseDecision(Phase.STOPPED, "Stopped", view.message or "the Ray job was stopped")
        return PhaseDecision(
            Phase.FAILED, view.reason or "AppFailed", view.message or "the Ray job failed"
        )
    if d == DeploymentStatus.RETRYING:
        return PhaseDecision(
            Phase.RESTARTING, "Retrying", f"retrying on a fresh Ray cluster after {view.failed} failure(s)"
        )
    if d == DeploymentStatus.RUNNING and j == RayJobStatus.RUNNING:
        return PhaseDecision(Phase.RUNNING, "Running", "the training driver is running")
    if d == DeploymentStatus.RUNNING:
        return PhaseDecision(Phase.STARTING, "DriverPending", "the Ray cluster is up; the driver is starting")
    if d in (DeploymentStatus.INITIALIZING, DeploymentStatus.WAITING):
        return PhaseDecision(Phase.STARTING, "ClusterProvisioning", "the Ray cluster is being created")
    if suspend:  # created suspended, KubeRay has not acted yet
        return PhaseDecision(Phase.SUSPENDED, "Suspended", "suspended by spec.suspend")
    return PhaseDecision(Phase.PENDING, "RayJobCreated", "waiting for KubeRay to pick up the RayJob")


def format_time(now: datetime) -> str:
    """RFC 3339 in UTC with seconds, as metav1.Time serialises."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(type_: ConditionType, ok: bool | None, reason: str, message: str) -> Condition:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    return Condition(type=type_.value, status=status, reason=reason, message=message)


def desired_conditions(
    decision: PhaseDecision, view: RayJobView | None, *, queued: bool
) -> list[Condition]:
    """Return the conditions for a phase (without times): one of each type, in a fixed order."""
    phase, reason, message = decision.phase, decision.reason, decision.message
    conds = [
        _cond(ConditionType.CREATED, view is not None,
              "RayJobCreated" if view is not None else "RayJobNotCreated",
              "the RayJob exists" if view is not None else "the RayJob has not been created yet"),
    ]
    if queued:
        admitted = view is not None and phase != Phase.QUEUED
        conds.append(_cond(ConditionType.ADMITTED, admitted, "Admitted" if admitted else "Suspended",
                           "admitted by the queue" if admitted else "waiting for queue admission"))
    provisioned = None if view is None else view.cluster_provisioned
    conds.append(_cond(
        ConditionType.CLUSTER_READY, provisioned,
        {True: "RayClusterProvisioned", False: "RayClusterNotProvisioned", None: "Unknown"}[provisioned],
        {True: "all Ray pods were ready", False: "Ray pods are not ready yet",
         None: "no Ray cluster status yet"}[provisioned],
    ))
    running = phase == Phase.RUNNING
    conds.append(_cond(ConditionType.RUNNING, running, reason if running else phase.value, message))
    suspended = phase == Phase.SUSPENDED
    conds.append(_cond(ConditionType.SUSPENDED, suspended, "Suspended" if suspended else "NotSuspended",
                       message if suspended else "not suspended"))
    if phase in (Phase.SUCCEEDED, Phase.STOPPED):
        conds.append(_cond(ConditionType.SUCCEEDED, phase == Phase.SUCCEEDED, reason, message))
    failed = phase == Phase.FAILED
    conds.append(_cond(ConditionType.FAILED, failed, reason if failed else "NotFailed",
                       message if failed else "no failure"))
    return conds


def with_transition_times(
    desired: list[Condition], previous: list[Condition], now: datetime, generation: int | None
) -> list[Condition]:
    """Keep each condition's lastTransitionTime unless its status changed (then it becomes ``now``)."""
    before = {c.type: c for c in previous}
    out = []
    for cond in desired:
        old = before.get(cond.type)
        changed = old is None or old.status != cond.status or not old.last_transition_time
        stamp = format_time(now) if changed else old.last_transition_time
        out.append(cond.model_copy(update={"last_transition_time": stamp,
                                           "observed_generation": generation}))
    return out


def rollout_summary(job: RLTrainingJob, status: RLTrainingJobStatus | None) -> str:
    """Return 'done/total' for the Rollout column; total follows spec.rollout.numRollout when set."""
    progress = status.progress if status else None
    done = progress.rollout_id + 1 if progress and progress.rollout_id is not None else 0
    total: int | str | None = job.spec.rollout.num_rollout
    if total is None:
        total = progress.num_rollout if progress and progress.num_rollout is not None else "?"
    return f"{done}/{total}"


def _dashboard(url: str | None) -> str | None:
    if not url:
        return None
    return url if "://" in url else f"http://{url}"


def fold_status(
    job: RLTrainingJob, rayjob: dict[str, Any] | None, now: datetime
) -> RLTrainingJobStatus:
    """Return the job's new status from its RayJob (None if absent) and its previous status.

    A terminal phase is sticky: once Succeeded, Stopped or Failed, later RayJob changes (its TTL deletion,
    say) do not move the job. ``progress`` is carried over unchanged; the driver owns it.
    """
    previous = job.status or RLTrainingJobStatus()
    generation = (job.metadata.model_extra or {}).get("generation")
    if previous.phase is not None and previous.phase.is_terminal:
        return previous
    queued = job.spec.cluster.queue_name is not None
    view = RayJobView.of(rayjob) if rayjob is not None else None
    decision = phase_of(view, suspend=job.spec.suspend, queued=queued)
    conditions = with_transition_times(
        desired_conditions(decision, view, queued=queued), previous.conditions, now, generation
    )
    return RLTrainingJobStatus(
        phase=decision.phase,
        reason=decision.reason,
        message=decision.message,
        conditions=conditions,
        observed_generation=generation,
        ray_job_name=names.rayjob_name(job.metadata.name),
        ray_cluster_name=view.cluster_name if view else previous.ray_cluster_name,
        dashboard_url=_dashboard(view.dashboard_url) if view else previous.dashboard_url,
        restarts=view.failed if view and view.failed else previous.restarts,
        rollout=rollout_summary(job, previous),
        progress=previous.progress,
    )


# Status fields the operator owns; `progress` (and `kopf`) belong to others and are never written here.
OPERATOR_FIELDS = (
    "phase", "reason", "message", "conditions", "observedGeneration", "rayJobName", "rayClusterName",
    "dashboardURL", "restarts", "rollout",
)


def status_patch(
    previous: RLTrainingJobStatus | None, new: RLTrainingJobStatus
) -> dict[str, Any]:
    """Return the merge patch ``{"status": {...}}`` of operator-owned fields that changed, or {} if none."""
    old = previous.model_dump(mode="json", by_alias=True) if previous else {}
    cur = new.model_dump(mode="json", by_alias=True)
    changed = {k: cur.get(k) for k in OPERATOR_FIELDS if old.get(k) != cur.get(k)}
    return {"status": changed} if changed else {}


@dataclass(frozen=True)
class PhaseEvent:
    """A Kubernetes Event to post on the job when its phase changes."""

    type: str  # Normal or Warning
    reason: str
    message: str


def phase_event(previous: Phase | None, new: RLTrainingJobStatus) -> PhaseEvent | None:
    """Return the Event for a phase change (Warning for Failed), or None when the phase is unchanged."""
    if new.phase is None or new.phase == previous:
        return None
    kind = "Warning" if new.phase == Phase.FAILED else "Normal"
    was = previous.value if previous else "none"
    return PhaseEvent(kind, new.phase.value, f"phase {was} -> {new.phase.value}: {new.message or ''}")


def invalid_spec_status(
    previous: RLTrainingJobStatus | None, message: str, now: datetime, generation: int | None
) -> RLTrainingJobStatus:
    """Return the Failed status of a job whose spec the operator cannot accept (reason InvalidSpec)."""
    decision = PhaseDecision(Phase.FAILED, "InvalidSpec", message)
    conditions = with_transition_times(
        desired_conditions(decision, None, queued=False),
        previous.conditions if previous else [], now, generation,
    )
    return RLTrainingJobStatus(
        phase=Phase.FAILED, reason="InvalidSpec", message=message, conditions=conditions,
        observed_generation=generation, progress=previous.progress if previous else None,
    )
