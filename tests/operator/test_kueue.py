"""The queue side of the pure core: which LocalQueue a job goes to, and how Kueue's Workload becomes
the job's phase, reason and Admitted condition (Workload shapes as Kueue v0.17 writes them)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.api import parse_job
from kuberl.api.status import Phase
from kuberl.errors import SpecError
from kuberl.operator.kueue import (
    QueueRef,
    admitted_condition,
    queue_of,
    queue_phase,
    workload_activation,
    workload_for,
)
from kuberl.operator.status import fold_status

REFERENCE = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "glm4-9b-dapo-math.yaml").read_text()
)
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
Q = QueueRef("h100-team")
NO_QUOTA = ("couldn't assign flavors to pod set trainer: insufficient unused quota for "
            "nvidia.com/gpu in flavor h100, 8 more needed")
PREEMPTED = ("Preempted to accommodate a workload (UID: 1f0e, JobUID: 77aa) due to prioritization "
             "in the ClusterQueue")


def _job(*, queue: str | None = None, labels: dict[str, str] | None = None,
         suspend: bool = False):
    manifest = copy.deepcopy(REFERENCE)
    manifest["metadata"].update(namespace="ns", uid="u1", generation=1)
    if labels:
        manifest["metadata"]["labels"] = labels
    if queue:
        manifest["spec"]["cluster"]["queueName"] = queue
    manifest["spec"]["suspend"] = suspend
    return parse_job(manifest)


def _cond(type_: str, status: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": "True" if status else "False", "reason": reason,
            "message": message, "lastTransitionTime": "2026-11-28T10:00:00Z"}


def workload(*conds: dict[str, Any], active: bool = True, cq: str | None = None,
             owner: str = "rj-uid", name: str = "rayjob-glm4-9b-dapo-math-1a2b3") -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": list(conds)}
    if cq:
        status["admission"] = {"clusterQueue": cq, "podSetAssignments": []}
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload",
            "metadata": {"name": name, "namespace": "ns",
                         "creationTimestamp": "2026-11-28T10:00:01Z",
                         "labels": {"kueue.x-k8s.io/job-uid": owner},
                         "ownerReferences": [{"kind": "RayJob", "name": "glm4", "uid": owner}]},
            "spec": {"queueName": "h100-team", "active": active}, "status": status}


PENDING = workload(_cond("QuotaReserved", False, "Pending", NO_QUOTA))
ADMITTED = workload(_cond("QuotaReserved", True, "QuotaReserved"), _cond("Admitted", True, "Admitted"),
                    cq="h100")
EVICTED = workload(_cond("QuotaReserved", False, "Pending"), _cond("Admitted", False, "NoReservation"),
                   _cond("Evicted", True, "Preempted", PREEMPTED),
                   _cond("Preempted", True, "InClusterQueue", PREEMPTED))


def _rayjob(deployment: str | None, job_status: str = "", uid: str = "rj-uid") -> dict[str, Any]:
    status = {} if deployment is None else {"jobDeploymentStatus": deployment, "jobStatus": job_status}
    return {"metadata": {"name": "glm4-9b-dapo-math", "namespace": "ns", "uid": uid,
                         "creationTimestamp": "2026-11-28T10:00:00Z"}, "status": status}


# --- which queue --------------------------------------------------------------------------------


def test_spec_field_label_and_operator_default_name_the_queue_in_that_order() -> None:
    assert queue_of(_job()) is None
    assert queue_of(_job(), default_queue="pool") == QueueRef("pool")
    assert queue_of(_job(labels={"kueue.x-k8s.io/queue-name": "team-a"}), "pool").name == "team-a"
    assert queue_of(_job(queue="team-b"), "pool").name == "team-b"
    labelled = _job(queue="team-b", labels={"kueue.x-k8s.io/queue-name": "team-b",
                                            "kueue.x-k8s.io/priority-class": "high"})
    assert queue_of(labelled, default_priority_class="low") == QueueRef("team-b", "high")
    assert queue_of(_job(queue="q"), default_priority_class="low") == QueueRef("q", "low")


def test_spec_field_and_label_naming_different_queues_is_refused_naming_both() -> None:
    with pytest.raises(SpecError, match=r"spec.cluster.queueName: 'team-b' differs .*'team-a'"):
        queue_of(_job(queue="team-b", labels={"kueue.x-k8s.io/queue-name": "team-a"}))


def test_the_workload_of_a_rayjob_is_the_one_it_owns() -> None:
    other = workload(owner="someone-else", name="rayjob-other-1")
    assert workload_for([other, PENDING], _rayjob("Suspended")) is PENDING
    assert workload_for([other], _rayjob("Suspended")) is None
    assert workload_for([PENDING], None) is None


# --- Workload -> phase --------------------------------------------------------------------------


def test_pending_admission_is_queued_with_kueues_message_in_the_admitted_condition() -> None:
    decision = queue_phase(Q, "Suspended", PENDING, suspend=False)
    assert decision is not None
    assert (decision.phase, decision.reason) == (Phase.QUEUED, "WaitingForAdmission")
    assert NO_QUOTA in decision.message and "LocalQueue h100-team" in decision.message
    cond = admitted_condition(Q, PENDING, "Suspended")
    assert (cond.status, cond.reason, cond.message) == ("False", "Pending", NO_QUOTA)


def test_admitted_is_starting_until_kuberay_takes_over() -> None:
    decision = queue_phase(Q, "Suspended", ADMITTED, suspend=False)
    assert decision is not None and (decision.phase, decision.reason) == (Phase.STARTING, "Admitted")
    assert "ClusterQueue h100" in decision.message
    assert queue_phase(Q, "Initializing", ADMITTED, suspend=False) is None  # KubeRay's state rules
    assert admitted_condition(Q, ADMITTED, "Running").status == "True"


def test_eviction_by_preemption_queues_the_job_again_with_the_reason_even_while_it_still_runs() -> None:
    for deployment in ("Running", "Suspending", "Suspended"):
        decision = queue_phase(Q, deployment, EVICTED, suspend=False)
        assert decision is not None and (decision.phase, decision.reason) == (Phase.QUEUED, "Preempted")
        assert PREEMPTED in decision.message and "newest checkpoint" in decision.message
    cond = admitted_condition(Q, EVICTED, "Suspended")
    assert (cond.status, cond.reason, cond.message) == ("False", "Preempted", PREEMPTED)


def test_without_a_workload_the_job_waits_then_names_the_missing_kueue() -> None:
    early = queue_phase(Q, "", None, suspend=False, rayjob_created=T0, now=T0 + timedelta(seconds=5))
    assert early is not None and (early.phase, early.reason) == (Phase.QUEUED, "WaitingForWorkload")
    late = queue_phase(Q, "Suspended", None, suspend=False, rayjob_created=T0,
                       now=T0 + timedelta(seconds=90))
    assert late is not None and late.reason == "KueueNotActing"
    assert "ray.io/rayjob integration" in late.message and "spec.cluster.queueName" in late.message


def test_user_suspension_and_finished_rayjobs_are_left_to_kuberays_state() -> None:
    assert queue_phase(Q, "Suspended", ADMITTED, suspend=True) is None
    assert queue_phase(Q, "Complete", EVICTED, suspend=False) is None
    assert queue_phase(Q, None, None, suspend=False) is None


def test_deactivated_workload_is_queued_as_deactivated() -> None:
    inactive = workload(_cond("QuotaReserved", False, "Pending"), active=False)
    decision = queue_phase(Q, "Suspended", inactive, suspend=False)
    assert decision is not None and decision.reason == "Deactivated"


def test_spec_suspend_drives_the_workloads_active_flag() -> None:
    assert workload_activation(Q, ADMITTED, suspend=True) == {"spec": {"active": False}}
    assert workload_activation(Q, ADMITTED, suspend=False) is None
    inactive = workload(active=False)
    assert workload_activation(Q, inactive, suspend=False) == {"spec": {"active": True}}
    assert workload_activation(None, ADMITTED, suspend=True) is None
    assert workload_activation(Q, None, suspend=True) is None
    finished = workload(_cond("Finished", True, "Succeeded"))
    assert workload_activation(Q, finished, suspend=True) is None


# --- through fold_status ------------------------------------------------------------------------


def test_fold_status_shows_queue_reason_then_starting_then_queued_again_after_preemption() -> None:
    job = _job(queue="h100-team")
    queued = fold_status(job, _rayjob("Suspended"), T0, workload=PENDING)
    assert (queued.phase, queued.reason) == (Phase.QUEUED, "WaitingForAdmission")
    admitted = {c.type: c for c in queued.conditions}["Admitted"]
    assert (admitted.status, admitted.reason, admitted.message) == ("False", "Pending", NO_QUOTA)

    starting = fold_status(job.model_copy(update={"status": queued}), _rayjob("Suspended"), T0,
                           workload=ADMITTED)
    assert (starting.phase, starting.reason) == (Phase.STARTING, "Admitted")
    running = fold_status(job.model_copy(update={"status": starting}),
                          _rayjob("Running", "RUNNING"), T0, workload=ADMITTED)
    assert running.phase == Phase.RUNNING
    assert {c.type: c.status for c in running.conditions}["Admitted"] == "True"

    preempted = fold_status(job.model_copy(update={"status": running}), _rayjob("Suspending"), T0,
                            workload=EVICTED)
    assert (preempted.phase, preempted.reason) == (Phase.QUEUED, "Preempted")
    assert {c.type: c.reason for c in preempted.conditions}["Admitted"] == "Preempted"


def test_fold_status_uses_the_operator_default_queue_and_the_job_label() -> None:
    plain = _job()
    assert fold_status(plain, _rayjob("Suspended"), T0, workload=PENDING,
                       queue=QueueRef("pool")).reason == "WaitingForAdmission"
    labelled = _job(labels={"kueue.x-k8s.io/queue-name": "team-a"})
    assert fold_status(labelled, _rayjob("Suspended"), T0, workload=PENDING).phase == Phase.QUEUED


def test_user_suspension_of_a_queued_job_is_suspended_not_queued() -> None:
    status = fold_status(_job(queue="h100-team", suspend=True), _rayjob("Suspended"), T0,
                         workload=workload(active=False))
    assert status.phase == Phase.SUSPENDED
