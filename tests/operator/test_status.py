"""The status fold: one row per KubeRay state (kubernetes-notes.md section 3), plus transitions."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.api import Phase, Progress, RLTrainingJobStatus, parse_job
from kuberl.operator.status import (
    OPERATOR_FIELDS,
    RayJobView,
    fold_status,
    phase_event,
    phase_of,
    status_patch,
)

REFERENCE = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "glm4-9b-dapo-math.yaml").read_text()
)
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _job(status: dict[str, Any] | None = None, *, suspend: bool = False, queue: str | None = None,
         generation: int = 1):
    manifest = copy.deepcopy(REFERENCE)
    manifest["metadata"].update(namespace="ns", uid="u1", generation=generation)
    manifest["spec"]["suspend"] = suspend
    if queue:
        manifest["spec"]["cluster"]["queueName"] = queue
    if status is not None:
        manifest["status"] = status
    return parse_job(manifest)


def _rayjob(deployment: str | None, job_status: str | None = None, **extra: Any) -> dict[str, Any]:
    status: dict[str, Any] = dict(extra)
    if deployment is not None:
        status["jobDeploymentStatus"] = deployment
    if job_status is not None:
        status["jobStatus"] = job_status
    return {"metadata": {"name": "glm4-9b-dapo-math"}, "status": status}


def _conds(status: RLTrainingJobStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


# (RayJob deploymentStatus, jobStatus, spec.suspend, queue) -> (phase, condition that must hold)
TABLE = [
    (None, None, False, None, Phase.PENDING, ("Created", "False")),
    ("", "", False, None, Phase.PENDING, ("Created", "True")),
    ("", "", True, None, Phase.SUSPENDED, ("Suspended", "True")),
    ("Suspended", "", False, "q", Phase.QUEUED, ("Admitted", "False")),
    ("Suspending", "", False, "q", Phase.QUEUED, ("Admitted", "False")),
    ("Suspended", "", True, None, Phase.SUSPENDED, ("Suspended", "True")),
    ("Suspending", "RUNNING", True, None, Phase.SUSPENDED, ("Running", "False")),
    ("Initializing", "", False, None, Phase.STARTING, ("Running", "False")),
    ("Waiting", "", False, None, Phase.STARTING, ("Running", "False")),
    ("Running", "PENDING", False, None, Phase.STARTING, ("Running", "False")),
    ("Running", "", False, None, Phase.STARTING, ("Running", "False")),
    ("Running", "RUNNING", False, None, Phase.RUNNING, ("Running", "True")),
    ("Running", "RUNNING", False, "q", Phase.RUNNING, ("Admitted", "True")),
    ("Retrying", "FAILED", False, None, Phase.RESTARTING, ("Running", "False")),
    ("Complete", "SUCCEEDED", False, None, Phase.SUCCEEDED, ("Succeeded", "True")),
    ("Complete", "STOPPED", False, None, Phase.STOPPED, ("Succeeded", "False")),
    ("Failed", "FAILED", False, None, Phase.FAILED, ("Failed", "True")),
    ("ValidationFailed", "", False, None, Phase.FAILED, ("Failed", "True")),
]


@pytest.mark.parametrize(("deployment", "job_status", "suspend", "queue", "phase", "cond"), TABLE)
def test_phase_table(deployment, job_status, suspend, queue, phase, cond) -> None:
    rayjob = None if deployment is None else _rayjob(deployment, job_status)
    status = fold_status(_job(suspend=suspend, queue=queue), rayjob, T0)
    assert status.phase == phase
    assert _conds(status)[cond[0]][0] == cond[1]
    # exactly one of the lifecycle conditions is True at a time
    trues = [t for t, (s, _) in _conds(status).items() if s == "True" and t in
             ("Running", "Suspended", "Succeeded", "Failed")]
    assert len(trues) <= 1
    assert all(c.last_transition_time and c.observed_generation == 1 for c in status.conditions)


def test_failed_rayjob_reason_and_message_reach_the_failed_condition() -> None:
    rayjob = _rayjob("Failed", "FAILED", reason="DeadlineExceeded",
                     message="the RayJob has passed the activeDeadlineSeconds")
    status = fold_status(_job(), rayjob, T0)
    failed = next(c for c in status.conditions if c.type == "Failed")
    assert (status.phase, status.reason) == (Phase.FAILED, "DeadlineExceeded")
    assert (failed.reason, failed.message) == ("DeadlineExceeded", rayjob["status"]["message"])


def test_app_failure_completes_with_apps_reason() -> None:
    status = fold_status(_job(), _rayjob("Complete", "FAILED", reason="AppFailed"), T0)
    assert (status.phase, status.reason) == (Phase.FAILED, "AppFailed")


def test_rayjob_details_are_surfaced() -> None:
    rayjob = _rayjob("Retrying", "FAILED", failed=2, rayClusterName="glm4-9b-dapo-math-x7k2p",
                     dashboardURL="glm4-9b-dapo-math-x7k2p-head-svc.ns.svc.cluster.local:8265",
                     rayClusterStatus={"conditions": [
                         {"type": "RayClusterProvisioned", "status": "True"}]})
    status = fold_status(_job(generation=4), rayjob, T0)
    assert status.restarts == 2
    assert status.ray_cluster_name == "glm4-9b-dapo-math-x7k2p"
    assert status.dashboard_url.startswith("http://glm4-9b-dapo-math-x7k2p-head-svc.")
    assert status.ray_job_name == "glm4-9b-dapo-math"
    assert status.observed_generation == 4
    assert _conds(status)["ClusterReady"] == ("True", "RayClusterProvisioned")


def test_transition_time_moves_only_when_a_condition_flips() -> None:
    first = fold_status(_job(), _rayjob("Running", "PENDING"), T0)
    same = fold_status(_job(first.model_dump(by_alias=True)), _rayjob("Running", "PENDING"),
                       T0 + timedelta(minutes=5))
    assert [c.last_transition_time for c in same.conditions] == [
        c.last_transition_time for c in first.conditions]
    later = fold_status(_job(same.model_dump(by_alias=True)), _rayjob("Running", "RUNNING"),
                        T0 + timedelta(minutes=9))
    times = {c.type: c.last_transition_time for c in later.conditions}
    assert times["Running"] == "2026-11-28T10:09:00Z"
    assert times["Created"] == "2026-11-28T10:00:00Z"


def test_terminal_phase_is_sticky_when_the_rayjob_goes_away() -> None:
    done = fold_status(_job(), _rayjob("Complete", "SUCCEEDED"), T0)
    after_ttl = fold_status(_job(done.model_dump(by_alias=True)), None, T0 + timedelta(hours=1))
    assert after_ttl.phase == Phase.SUCCEEDED
    assert status_patch(done, after_ttl) == {}


def test_progress_is_kept_and_rollout_column_follows_spec_num_rollout() -> None:
    previous = {"phase": "Running", "progress": {"rolloutId": 41, "numRollout": 3000,
                                                 "lastReward": 0.5}}
    status = fold_status(_job(previous), _rayjob("Running", "RUNNING"), T0)
    assert status.progress.last_reward == 0.5
    assert status.rollout == "42/3000"
    manifest_job = _job(previous)
    changed = parse_job({**manifest_job.to_manifest(), "spec": {
        **manifest_job.to_manifest()["spec"],
        "rollout": {**manifest_job.to_manifest()["spec"]["rollout"], "numRollout": 100}}})
    assert fold_status(changed, _rayjob("Running", "RUNNING"), T0).rollout == "42/100"
    assert fold_status(_job(), None, T0).rollout == "0/3000"


def test_patch_holds_only_changed_operator_fields_never_progress() -> None:
    previous = fold_status(_job(), _rayjob("Running", "PENDING"), T0)
    with_progress = previous.model_copy(update={"progress": Progress(rollout_id=3)})
    new = fold_status(_job(with_progress.model_dump(by_alias=True)), _rayjob("Running", "RUNNING"),
                      T0 + timedelta(seconds=30))
    patch = status_patch(previous, new)["status"]
    assert set(patch) <= set(OPERATOR_FIELDS)
    assert patch["phase"] == "Running" and "progress" not in patch
    assert "rayJobName" not in patch  # unchanged
    assert status_patch(new, new) == {}
    assert status_patch(None, new)["status"]["rayJobName"] == "glm4-9b-dapo-math"


def test_phase_events_warn_on_failure_and_stay_quiet_without_change() -> None:
    failed = fold_status(_job(), _rayjob("Failed", "FAILED", reason="AppFailed"), T0)
    event = phase_event(Phase.RUNNING, failed)
    assert (event.type, event.reason) == ("Warning", "Failed")
    assert "Running -> Failed" in event.message
    assert phase_event(Phase.FAILED, failed) is None
    assert phase_event(None, fold_status(_job(), None, T0)).type == "Normal"


def test_cluster_state_stands_in_for_missing_conditions() -> None:
    assert RayJobView.of(_rayjob("Running", rayClusterStatus={"state": "ready"})).cluster_provisioned
    assert RayJobView.of(_rayjob("Initializing")).cluster_provisioned is None
    assert RayJobView.of(_rayjob("Running")).cluster_provisioned is True  # past Initializing: ready
    assert phase_of(None, suspend=True).phase == Phase.PENDING
