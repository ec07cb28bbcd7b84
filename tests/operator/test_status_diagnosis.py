"""Why a waiting job does not move: pod problems and a silent KubeRay, folded into reason, message, fix."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from kuberl.api import Phase, RLTrainingJobStatus, parse_job
from kuberl.operator.status import (
    KUBERAY_GRACE_SECONDS,
    diagnose_pods,
    fold_status,
    kuberay_watched_namespaces,
    phase_event,
)

REFERENCE = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "glm4-9b-dapo-math.yaml").read_text()
)
T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)


def _job(status: dict[str, Any] | None = None):
    manifest = copy.deepcopy(REFERENCE)
    manifest["metadata"].update(namespace="team-a", uid="u1", generation=1)
    if status is not None:
        manifest["status"] = status
    return parse_job(manifest)


def _rayjob(deployment: str | None = "Initializing", created: datetime = T0) -> dict[str, Any]:
    status = {} if deployment is None else {"jobDeploymentStatus": deployment}
    return {"metadata": {"name": "glm4-9b-dapo-math",
                         "creationTimestamp": created.strftime("%Y-%m-%dT%H:%M:%SZ")},
            "status": status}


def unschedulable(name: str, message: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}}


def waiting(name: str, reason: str, **extra: Any) -> dict[str, Any]:
    container = {"name": "ray-worker", "image": "registry.example/kuberl-worker:nope",
                 "state": {"waiting": {"reason": reason, "message": "back-off pulling image"}},
                 **extra}
    return {"metadata": {"name": name}, "status": {"phase": "Pending",
                                                    "containerStatuses": [container]}}


RUNNING_POD = {"metadata": {"name": "a-head"}, "status": {"phase": "Running", "conditions": [
    {"type": "PodScheduled", "status": "True"}], "containerStatuses": [
    {"name": "ray-head", "state": {"running": {}}}]}}
PVC_MESSAGE = ('0/2 nodes are available: persistentvolumeclaim "rl-data" not found. preemption: '
               '0/2 nodes are available: 2 Preemption is not helpful for scheduling.')
TAINT_MESSAGE = ("0/2 nodes are available: 2 node(s) had untolerated taint {dedicated: rl}. "
                 "preemption: 0/2 nodes are available: 2 Preemption is not helpful for scheduling.")


def test_missing_pvc_names_the_claim_and_the_spec_field() -> None:
    problem = diagnose_pods([RUNNING_POD, unschedulable("a-worker-x", PVC_MESSAGE)], _job())
    assert problem is not None and problem.reason == "Unschedulable"
    assert 'persistentvolumeclaim "rl-data" not found' in problem.message
    assert "a-worker-x" in problem.message and "spec.cluster.storage.claimName" in problem.message


def test_untolerated_taint_suggests_the_toleration() -> None:
    problem = diagnose_pods([unschedulable("p", TAINT_MESSAGE)], _job())
    assert problem is not None and problem.reason == "Unschedulable"
    assert "spec.cluster.tolerations" in problem.message and "key: dedicated" in problem.message


def test_image_pull_failure_names_the_image_and_spec_cluster_image() -> None:
    problem = diagnose_pods([waiting("p", "ImagePullBackOff")], _job())
    assert problem is not None and problem.reason == "ImagePullFailed"
    assert "registry.example/kuberl-worker:nope" in problem.message
    assert "spec.cluster.image" in problem.message


def test_crash_loop_shows_exit_code_and_the_logs_command() -> None:
    pod = waiting("h", "CrashLoopBackOff", restartCount=4,
                  lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
    problem = diagnose_pods([pod], _job())
    assert problem is not None and problem.reason == "CrashLoopBackOff"
    assert "exit code 137, OOMKilled" in problem.message and "4 restarts" in problem.message
    assert "kubectl logs h -c ray-worker --previous" in problem.message


def test_healthy_and_terminating_pods_have_no_problem() -> None:
    gone = unschedulable("old", PVC_MESSAGE)
    gone["metadata"]["deletionTimestamp"] = "2026-11-28T10:00:00Z"
    assert diagnose_pods([RUNNING_POD, gone], _job()) is None
    assert diagnose_pods([], _job()) is None


def test_the_first_problem_by_pod_name_wins_so_the_message_is_stable() -> None:
    pods = [unschedulable("b", TAINT_MESSAGE), unschedulable("a", PVC_MESSAGE)]
    assert diagnose_pods(pods) == diagnose_pods(list(reversed(pods)))
    assert "pod a " in diagnose_pods(pods).message  # type: ignore[union-attr]


def test_fold_turns_a_pod_problem_into_reason_message_and_cluster_ready_condition() -> None:
    st = fold_status(_job(), _rayjob("Initializing"), T0, [unschedulable("w", PVC_MESSAGE)])
    assert st.phase == Phase.STARTING and st.reason == "Unschedulable"
    assert "rl-data" in (st.message or "")
    ready = next(c for c in st.conditions if c.type == "ClusterReady")
    assert (ready.status, ready.reason) == ("False", "Unschedulable")
    assert "spec.cluster.storage.claimName" in ready.message


def test_fold_ignores_pod_problems_once_running_or_finished() -> None:
    pods = [waiting("p", "CrashLoopBackOff")]
    running = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    st = fold_status(_job(), {"metadata": {}, "status": running}, T0, pods)
    assert (st.phase, st.reason) == (Phase.RUNNING, "Running")


def test_silent_kuberay_is_reported_after_the_grace_period_with_its_namespaces() -> None:
    rayjob = _rayjob(None, created=T0)
    early = fold_status(_job(), rayjob, T0 + timedelta(seconds=KUBERAY_GRACE_SECONDS - 1))
    assert (early.phase, early.reason) == (Phase.PENDING, "RayJobCreated")
    late = fold_status(_job(), rayjob, T0 + timedelta(seconds=KUBERAY_GRACE_SECONDS + 15),
                       kuberay_namespaces=["kuberay-system"])
    assert (late.phase, late.reason) == (Phase.PENDING, "KubeRayNotActing")
    assert "75 s" in (late.message or "") and "only kuberay-system" in (late.message or "")
    assert "'team-a'" in (late.message or "")
    unknown = fold_status(_job(), rayjob, T0 + timedelta(seconds=KUBERAY_GRACE_SECONDS + 1))
    assert "install KubeRay" in (unknown.message or "")


def test_kuberay_watch_namespaces_come_from_flag_or_env() -> None:
    def deploy(args: list[str], env: list[dict[str, str]] | None = None) -> dict[str, Any]:
        return {"spec": {"template": {"spec": {"containers": [
            {"name": "kuberay-operator", "args": args, "env": env or []}]}}}}

    assert kuberay_watched_namespaces([]) is None
    assert kuberay_watched_namespaces([deploy(["--watch-namespace=a,b"])]) == ["a", "b"]
    assert kuberay_watched_namespaces([deploy([], [{"name": "WATCH_NAMESPACE", "value": "c"}])]) == ["c"]
    assert kuberay_watched_namespaces([deploy(["--metrics-addr=:8080"])]) == []  # all namespaces


def test_events_name_the_true_previous_phase_and_warn_once_per_new_problem() -> None:
    pending = fold_status(_job(), _rayjob(None), T0)
    first = phase_event(None, pending)
    assert first is not None and first.message.startswith("phase none -> Pending")
    starting = fold_status(_job(pending.model_dump(by_alias=True, mode="json")),
                           _rayjob("Initializing"), T0)
    step = phase_event(pending.phase, starting, pending.reason)
    assert step is not None and step.message.startswith("phase Pending -> Starting")
    stuck = fold_status(_job(starting.model_dump(by_alias=True, mode="json")),
                        _rayjob("Initializing"), T0, [unschedulable("w", PVC_MESSAGE)])
    warn = phase_event(starting.phase, stuck, starting.reason)
    assert warn is not None and (warn.type, warn.reason) == ("Warning", "Unschedulable")
    assert phase_event(stuck.phase, stuck, stuck.reason) is None  # same problem: no second Warning


def test_status_round_trips_with_a_problem_reason() -> None:
    st = fold_status(_job(), _rayjob("Initializing"), T0, [waiting("p", "ErrImagePull")])
    again = RLTrainingJobStatus.model_validate(st.model_dump(by_alias=True, mode="json"))
    assert again.reason == "ImagePullFailed"
