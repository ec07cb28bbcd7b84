"""Pure status folding: the job, its RayJob (or none) and the time -> the RLTrainingJob status to show.

KubeRay's RayJob has two state fields: ``jobDeploymentStatus`` (KubeRay's view of the cluster and submission)
and ``jobStatus`` (Ray's view of the driver). ``phase_of`` maps the pair onto our ``Phase`` as the table in
``kubernetes-notes.md`` section 3 does; ``fold_status`` adds conditions with stable transition times, and
``status_patch`` returns only what changed, leaving ``progress`` (written by the driver) untouched.

KubeRay reports nothing about pods that cannot start, so ``diagnose_pods`` reads the job's pods directly
(scheduling failures, image pulls, crash loops) and ``kuberay_silence`` notices a RayJob no KubeRay operator
has touched; both turn into the phase's reason and message, each with the fix.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from kuberl.api.job import RLTrainingJob
from kuberl.api.status import Condition, ConditionType, Phase, RLTrainingJobStatus
from kuberl.errors import SpecError
from kuberl.operator import names
from kuberl.operator.kueue import QueueRef, admitted_condition, queue_of, queue_phase


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
    created_at: datetime | None = None  # the RayJob's metadata.creationTimestamp

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
            created_at=parse_time((rayjob.get("metadata") or {}).get("creationTimestamp")),
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


def parse_time(value: str | None) -> datetime | None:
    """Parse a metav1.Time (``2026-11-28T10:00:00Z``); None for absent or malformed values."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


# --- why pods do not start -------------------------------------------------------------------------

KUBERAY_GRACE_SECONDS = 60.0
"""How long a RayJob may sit without any status before we say no KubeRay operator is acting on it."""

IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                                "ErrImageNeverPull", "RegistryUnavailable"})


@dataclass(frozen=True)
class PodProblem:
    """Why a job's pods do not start: a CamelCase reason and a message that ends with the fix."""

    reason: str
    message: str


def _scheduling_fix(message: str, job: RLTrainingJob | None) -> str:
    """The fix for a scheduler message, naming the spec field to change."""
    claim = re.search(r'persistentvolumeclaim "([^"]+)" not found', message)
    if claim:
        return (f"create PersistentVolumeClaim {claim.group(1)!r} in the job's namespace, or point "
                "spec.cluster.storage.claimName at an existing one")
    if "unbound immediate PersistentVolumeClaims" in message:
        return "the PersistentVolumeClaim is not bound: check its StorageClass and `kubectl describe pvc`"
    taint = re.search(r"untolerated taint[s]? ?\{([^}]*)\}", message)
    if taint:
        key = taint.group(1).split(":")[0].strip()
        return (f"add a toleration for taint {key!r} to spec.cluster.tolerations, e.g. "
                f"{{key: {key}, operator: Exists, effect: NoSchedule}}")
    if "Insufficient nvidia.com/gpu" in message:
        return ("not enough free GPUs on matching nodes: wait for other jobs, add nodes, or lower "
                "spec.placement GPU counts")
    if "node affinity/selector" in message or "didn't match Pod's node" in message:
        wanted = f" (spec.cluster.gpuType={job.spec.cluster.gpu_type.value})" if job else ""
        return ("no node carries the labels the pods require: check spec.cluster.gpuType and "
                f"spec.cluster.nodeSelector{wanted}")
    if "Insufficient cpu" in message or "Insufficient memory" in message:
        return "nodes lack CPU or memory: lower spec.cluster.cpusPerGpu / spec.cluster.memoryPerGpuGi"
    return "see `kubectl describe pod` for the scheduler's full message"


def _container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _pod_problem(pod: dict[str, Any], job: RLTrainingJob | None) -> PodProblem | None:
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    for cond in status.get("conditions") or []:
        if (cond.get("type") == "PodScheduled" and cond.get("status") == "False"
                and cond.get("reason") == "Unschedulable"):
            message = " ".join((cond.get("message") or "no node fits").split())
            return PodProblem("Unschedulable", f"pod {name} cannot be scheduled: {message} "
                                               f"Fix: {_scheduling_fix(message, job)}")
    for container in _container_statuses(pod):
        waiting = (container.get("state") or {}).get("waiting") or {}
        why = waiting.get("reason") or ""
        detail = " ".join((waiting.get("message") or "").split())
        image = container.get("image") or "?"
        if why in IMAGE_PULL_REASONS:
            return PodProblem("ImagePullFailed", (
                f"pod {name} cannot pull image {image!r} ({why}{': ' + detail if detail else ''}). "
                "Fix: check spec.cluster.image (or the operator's --worker-image) and that the "
                "namespace's service account has the registry's imagePullSecrets"))
        if why == "CrashLoopBackOff":
            last = (container.get("lastState") or {}).get("terminated") or {}
            exit_info = f"exit code {last.get('exitCode')}" if "exitCode" in last else "it exited"
            if last.get("reason"):
                exit_info += f", {last['reason']}"
            return PodProblem("CrashLoopBackOff", (
                f"container {container.get('name', '?')} of pod {name} keeps crashing ({exit_info}, "
                f"{container.get('restartCount', 0)} restarts). Fix: read "
                f"`kubectl logs {name} -c {container.get('name', '?')} --previous`"))
        if why in ("CreateContainerConfigError", "CreateContainerError"):
            return PodProblem(why, f"pod {name} cannot start its container: {detail or why}. Fix: "
                                   "create the ConfigMap or Secret it names, or fix spec.cluster.env")
    return None


def diagnose_pods(pods: Sequence[dict[str, Any]], job: RLTrainingJob | None = None
                  ) -> PodProblem | None:
    """Return the first reason the job's pods cannot start (by pod name, so the answer is stable)."""
    live = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    for pod in sorted(live, key=lambda p: (p.get("metadata") or {}).get("name", "")):
        problem = _pod_problem(pod, job)
        if problem is not None:
            return problem
    return None


def kuberay_watched_namespaces(deployments: Sequence[dict[str, Any]]) -> list[str] | None:
    """Namespaces the KubeRay operator Deployments watch (from ``--watch-namespace`` or
    ``WATCH_NAMESPACE``); ``[]`` means all namespaces, None that no KubeRay Deployment was seen."""
    if not deployments:
        return None
    found: list[str] = []
    for deploy in deployments:
        containers = (((deploy.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
            "containers") or []
        watched: str | None = None
        for container in containers:
            for arg in [*(container.get("command") or []), *(container.get("args") or [])]:
                if arg.startswith("--watch-namespace="):
                    watched = arg.split("=", 1)[1]
            for env in container.get("env") or []:
                if env.get("name") == "WATCH_NAMESPACE" and env.get("value"):
                    watched = env["value"]
        if not watched:
            return []  # one operator watching everything
        found += [n for n in watched.split(",") if n and n not in found]
    return found


def kuberay_silence(view: RayJobView | None, now: datetime, namespace: str | None,
                    watched: list[str] | None, grace: float = KUBERAY_GRACE_SECONDS
                    ) -> PodProblem | None:
    """A RayJob without any status ``grace`` seconds after creation: no KubeRay operator acts on it."""
    if view is None or view.deployment or view.created_at is None:
        return None
    waited = (now - view.created_at).total_seconds()
    if waited < grace:
        return None
    where = f"namespace {namespace!r}" if namespace else "this namespace"
    if watched is None:
        hint = ("no KubeRay operator Deployment was found; install KubeRay v1.5+ "
                "(helm install kuberay-operator kuberay/kuberay-operator) or, on the dev cluster, "
                "start it with `kuberl dev cluster up --kuberay-operator` (it watches kuberay-system)")
    elif not watched:
        hint = "a KubeRay operator watching all namespaces exists but has not acted: is its pod running?"
    else:
        hint = (f"KubeRay watches only {', '.join(watched)}: create the job there, or add {where} "
                "to KubeRay's watchNamespace")
    return PodProblem("KubeRayNotActing", f"no KubeRay operator has acted on the RayJob for "
                                          f"{waited:.0f} s. Fix: {hint}")


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


WAITING_PHASES = frozenset({Phase.PENDING, Phase.STARTING, Phase.RESTARTING})
"""Phases in which a pod problem or a silent KubeRay is the real reason the job does not move."""


def explain(decision: PhaseDecision, problem: PodProblem | None) -> PhaseDecision:
    """Replace a waiting phase's generic reason ("the Ray cluster is being created") by the problem."""
    if problem is None or decision.phase not in WAITING_PHASES:
        return decision
    return PhaseDecision(decision.phase, problem.reason, problem.message)


def _queue(job: RLTrainingJob, queue: QueueRef | None) -> QueueRef | None:
    if queue is not None:
        return queue
    try:
        return queue_of(job)
    except SpecError:  # refused at admission; a job admitted before keeps its spec field's queue
        return QueueRef(job.spec.cluster.queue_name) if job.spec.cluster.queue_name else None


def fold_status(
    job: RLTrainingJob, rayjob: dict[str, Any] | None, now: datetime,
    pods: Sequence[dict[str, Any]] = (), kuberay_namespaces: list[str] | None = None,
    *, workload: dict[str, Any] | None = None, queue: QueueRef | None = None,
) -> RLTrainingJobStatus:
    """Return the job's new status from its RayJob (None if absent), its pods and its previous status.

    A terminal phase is sticky: once Succeeded, Stopped or Failed, later RayJob changes (its TTL deletion,
    say) do not move the job. ``progress`` is carried over unchanged; the driver owns it. While the job
    waits, a pod problem (or a RayJob no KubeRay acts on) becomes its reason, message and ClusterReady
    condition; ``kuberay_namespaces`` is what ``kuberay_watched_namespaces`` found. For a queued job
    (``queue``, else the job's own spec field or label) Kueue's ``workload`` decides Queued/Starting
    and the Admitted condition (``kuberl.operator.kueue``).
    """
    previous = job.status or RLTrainingJobStatus()
    generation = (job.metadata.model_extra or {}).get("generation")
    if previous.phase is not None and previous.phase.is_terminal:
        return previous
    queue = _queue(job, queue)
    queued = queue is not None
    view = RayJobView.of(rayjob) if rayjob is not None else None
    decision = phase_of(view, suspend=job.spec.suspend, queued=queued)
    by_queue = queue_phase(queue, view.deployment if view else None, workload,
                           suspend=job.spec.suspend, rayjob_created=view.created_at if view else None,
                           now=now) if queue is not None else None
    if by_queue is not None:
        decision = PhaseDecision(by_queue.phase, by_queue.reason, by_queue.message)
    problem = diagnose_pods(pods, job) or kuberay_silence(
        view, now, job.metadata.namespace, kuberay_namespaces)
    decision = explain(decision, problem)
    desired = desired_conditions(decision, view, queued=queued)
    if queue is not None and view is not None:
        admitted = admitted_condition(queue, workload, view.deployment)
        desired = [admitted if c.type == ConditionType.ADMITTED else c for c in desired]
    if problem is not None and decision.reason == problem.reason:
        desired = [_cond(ConditionType.CLUSTER_READY, False, problem.reason, problem.message)
                   if c.type == ConditionType.CLUSTER_READY else c for c in desired]
    conditions = with_transition_times(desired, previous.conditions, now, generation)
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


PROBLEM_REASONS = frozenset({"Unschedulable", "ImagePullFailed", "CrashLoopBackOff",
                             "CreateContainerConfigError", "CreateContainerError", "KubeRayNotActing"})


def phase_event(previous: Phase | None, new: RLTrainingJobStatus,
                previous_reason: str | None = None) -> PhaseEvent | None:
    """Return the Event for a phase change (Warning for Failed), a Warning when a waiting job newly hits
    a pod problem (same phase, new problem reason), or None when nothing worth telling changed.

    ``previous`` must be the phase as stored before this write, so "from" is always the true one.
    """
    if new.phase is None:
        return None
    if new.phase == previous:
        if new.reason in PROBLEM_REASONS and new.reason != previous_reason:
            return PhaseEvent("Warning", new.reason or "", new.message or "")
        return None
    problem = new.reason in PROBLEM_REASONS
    kind = "Warning" if new.phase == Phase.FAILED or problem else "Normal"
    was = previous.value if previous else "none"
    reason = new.reason if problem and new.reason else new.phase.value
    return PhaseEvent(kind, reason, f"phase {was} -> {new.phase.value}: {new.message or ''}")


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
