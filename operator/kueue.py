"""Kueue in the operator's pure core: which queue a job goes to, and what its Workload says.

Kueue knows RayJobs, not RLTrainingJobs: the operator labels the RayJob with the LocalQueue
(``kueue.x-k8s.io/queue-name``) and, when given, the WorkloadPriorityClass
(``kueue.x-k8s.io/priority-class``), creates it suspended, and lets Kueue unsuspend it when the whole
gang fits. Kueue records its decisions on a Workload it creates for the RayJob (owned by it, labelled
``kueue.x-k8s.io/job-uid``); ``queue_decision`` folds that Workload into the job's phase: waiting for
admission and evicted/preempted are ``Queued`` with Kueue's own message, admitted is ``Starting``.

A user's ``spec.suspend`` on a queued job deactivates the Workload (``spec.active: false``), Kueue's
own way to stop a job and release its quota: suspending the RayJob directly would be undone by Kueue
as long as the Workload stays admitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kuberl.api.job import RLTrainingJob
from kuberl.api.status import Condition, ConditionType, Phase
from kuberl.errors import SpecError
from kuberl.operator import labels

WORKLOAD_GROUP = "kueue.x-k8s.io"
WORKLOAD_VERSIONS = ("v1beta2", "v1beta1")  # Kueue >= 0.15 serves v1beta2; older ones v1beta1 only
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
"""Kueue labels each Workload with the UID of the job it was made for."""

WORKLOAD_GRACE_SECONDS = 60.0
"""How long a queued RayJob may wait without a Workload before we say Kueue is not acting on it."""


@dataclass(frozen=True)
class QueueRef:
    """Where a job is queued: the Kueue LocalQueue and the optional WorkloadPriorityClass."""

    name: str
    priority_class: str | None = None


def queue_of(job: RLTrainingJob, default_queue: str | None = None,
             default_priority_class: str | None = None) -> QueueRef | None:
    """The job's queue: ``spec.cluster.queueName``, else the job's ``kueue.x-k8s.io/queue-name`` label
    (what Kueue users put on the objects they submit), else the operator's default; None: no Kueue.

    Raises:
        SpecError: the spec field and the label name different queues.
    """
    spec_queue = job.spec.cluster.queue_name
    label_queue = job.metadata.labels.get(labels.KUEUE_QUEUE_NAME) or None
    if spec_queue and label_queue and spec_queue != label_queue:
        raise SpecError([
            f"spec.cluster.queueName: {spec_queue!r} differs from the job's label "
            f"{labels.KUEUE_QUEUE_NAME}={label_queue!r}; set one of them (spec.cluster.queueName is "
            "the documented way) or make them equal"])
    name = spec_queue or label_queue or default_queue
    if not name:
        return None
    priority = job.metadata.labels.get(labels.KUEUE_PRIORITY_CLASS) or default_priority_class
    return QueueRef(name=name, priority_class=priority)


@dataclass(frozen=True)
class WorkloadCondition:
    status: bool
    reason: str
    message: str


def _conditions(workload: dict[str, Any]) -> dict[str, WorkloadCondition]:
    out = {}
    for cond in (workload.get("status") or {}).get("conditions") or []:
        out[cond.get("type", "")] = WorkloadCondition(
            status=cond.get("status") == "True", reason=cond.get("reason") or "",
            message=" ".join((cond.get("message") or "").split()))
    return out


@dataclass(frozen=True)
class WorkloadView:
    """The fields of a Kueue Workload that the fold reads (v1beta1 and v1beta2 agree on them)."""

    name: str
    queue: str
    active: bool
    conditions: dict[str, WorkloadCondition]
    cluster_queue: str | None

    @classmethod
    def of(cls, workload: dict[str, Any]) -> WorkloadView:
        spec = workload.get("spec") or {}
        admission = (workload.get("status") or {}).get("admission") or {}
        return cls(
            name=(workload.get("metadata") or {}).get("name", ""),
            queue=spec.get("queueName") or "",
            active=spec.get("active", True) is not False,
            conditions=_conditions(workload),
            cluster_queue=admission.get("clusterQueue") or None,
        )

    def cond(self, type_: str) -> WorkloadCondition | None:
        return self.conditions.get(type_)

    def is_true(self, type_: str) -> bool:
        found = self.cond(type_)
        return found is not None and found.status

    @property
    def admitted(self) -> bool:
        return self.is_true("Admitted")

    @property
    def evicted(self) -> WorkloadCondition | None:
        found = self.cond("Evicted")
        return found if found is not None and found.status else None

    @property
    def finished(self) -> bool:
        return self.is_true("Finished")


def workload_for(workloads: Sequence[dict[str, Any]], rayjob: dict[str, Any] | None
                 ) -> dict[str, Any] | None:
    """The Workload Kueue made for ``rayjob``: owned by it (by UID), the newest if several."""
    if rayjob is None:
        return None
    uid = (rayjob.get("metadata") or {}).get("uid")
    if not uid:
        return None
    mine = []
    for wl in workloads:
        meta = wl.get("metadata") or {}
        owners = [o.get("uid") for o in meta.get("ownerReferences") or []]
        if uid in owners or (meta.get("labels") or {}).get(JOB_UID_LABEL) == uid:
            mine.append(wl)
    mine.sort(key=lambda w: (w.get("metadata") or {}).get("creationTimestamp") or "")
    return mine[-1] if mine else None


@dataclass(frozen=True)
class QueuePhase:
    """A phase the queue decides, with the reason and message to show beside it."""

    phase: Phase
    reason: str
    message: str


_SUSPENDED_DEPLOYMENTS = frozenset({"", "Suspended", "Suspending"})
_TERMINAL_DEPLOYMENTS = frozenset({"Complete", "Failed", "ValidationFailed"})


def admitted_condition(queue: QueueRef, workload: dict[str, Any] | None,
                       deployment: str | None = None) -> Condition:
    """The job's ``Admitted`` condition from its Workload, with Kueue's own reason and message while
    it waits (e.g. ``Pending``: "couldn't assign flavors to pod set trainer: insufficient unused
    quota for nvidia.com/gpu in flavor h100, 8 more needed")."""
    where = f"LocalQueue {queue.name}"

    def cond(ok: bool, reason: str, message: str) -> Condition:
        return Condition(type=ConditionType.ADMITTED.value, status="True" if ok else "False",
                         reason=reason, message=message)

    if workload is None and deployment is not None and deployment not in _SUSPENDED_DEPLOYMENTS:
        return cond(True, "Admitted", f"the RayJob left suspension, so {where} admitted it")
    if workload is None:
        return cond(False, "WorkloadNotCreated",
                    f"Kueue has not created a Workload for the RayJob ({where})")
    wl = WorkloadView.of(workload)
    if wl.admitted and wl.evicted is None:
        return cond(True, "Admitted", f"admitted by ClusterQueue {wl.cluster_queue or '?'} ({where})")
    pending = wl.evicted or wl.cond("QuotaReserved") or wl.cond("Admitted")
    reason = pending.reason if pending and pending.reason else "Pending"
    message = pending.message if pending and pending.message else f"waiting for {where} to admit it"
    return cond(False, reason, message)


def queue_phase(queue: QueueRef, deployment: str | None, workload: dict[str, Any] | None, *,
                suspend: bool, rayjob_created: datetime | None = None,
                now: datetime | None = None,
                grace: float = WORKLOAD_GRACE_SECONDS) -> QueuePhase | None:
    """The phase Kueue imposes on a queued job, or None where KubeRay's state (or spec.suspend)
    decides: no RayJob yet, a user suspension, a finished RayJob, or a running one not evicted.

    ``deployment`` is the RayJob's ``status.jobDeploymentStatus`` (None: no RayJob yet); a queued
    RayJob is created suspended, so a RayJob KubeRay has not reported on yet counts as suspended.
    """
    if deployment is None or suspend or deployment in _TERMINAL_DEPLOYMENTS:
        return None
    where = f"LocalQueue {queue.name}"
    wl = WorkloadView.of(workload) if workload is not None else None
    if wl is not None and wl.evicted is not None:
        ev = wl.evicted
        return QueuePhase(Phase.QUEUED, "Preempted" if ev.reason == "Preempted" else "Evicted", (
            f"evicted by Kueue ({ev.reason}): {ev.message or 'no message'}; queued again in {where}, "
            "it resumes from its newest checkpoint once re-admitted"))
    if deployment not in _SUSPENDED_DEPLOYMENTS:
        return None
    if wl is None:
        waited = (now - rayjob_created).total_seconds() if now and rayjob_created else 0.0
        if waited >= grace:
            return QueuePhase(Phase.QUEUED, "KueueNotActing", (
                f"no Kueue Workload for the RayJob after {waited:.0f} s. Fix: install Kueue with the "
                f"ray.io/rayjob integration enabled and create {where} in this namespace "
                "(or drop spec.cluster.queueName)"))
        return QueuePhase(Phase.QUEUED, "WaitingForWorkload",
                          f"the RayJob waits in {where} for Kueue to create its Workload")
    if wl.admitted:
        return QueuePhase(Phase.STARTING, "Admitted", (
            f"admitted by ClusterQueue {wl.cluster_queue or '?'}; KubeRay is creating the Ray "
            "cluster"))
    if not wl.active:
        return QueuePhase(Phase.QUEUED, "Deactivated",
                          f"the Workload {wl.name} is deactivated (spec.active=false)")
    return QueuePhase(Phase.QUEUED, "WaitingForAdmission",
                      f"{where}: {admitted_condition(queue, workload).message}")


def workload_activation(queue: QueueRef | None, workload: dict[str, Any] | None, *,
                        suspend: bool) -> dict[str, Any] | None:
    """The merge patch that makes the Workload's ``spec.active`` follow ``spec.suspend`` (None when
    it already does, or there is no queue or Workload)."""
    if queue is None or workload is None:
        return None
    wl = WorkloadView.of(workload)
    if wl.finished or wl.active == (not suspend):
        return None
    return {"spec": {"active": not suspend}}
