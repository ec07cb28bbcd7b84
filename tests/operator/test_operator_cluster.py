"""The operator against the real local apiserver: children, status transitions, lifecycle, robustness.

The operator runs as ``python -m kuberl.operator`` in a subprocess, watching one namespace. No KubeRay
controller runs Ray here (there are no GPUs), so the tests play KubeRay's part by patching
``rayjobs/status`` exactly as KubeRay would, and the driver's part by patching ``rltrainingjobs/status``
under the driver's own ServiceAccount.
"""

from __future__ import annotations

import copy
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.api import parse_job
from kuberl.operator.render import RenderSettings, render_children
from kuberl.worker.progress import ProgressReport, progress_patch
from tests.operator.conftest import Kubectl, OperatorProcess, wait_for
from tests.operator.rayjob_checks import check_rayjob

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = [*sorted(EXAMPLES.glob("*.yaml")), EXAMPLES / "tiny" / "job.yaml"]
REFERENCE = EXAMPLES / "glm4-9b-dapo-math.yaml"
TEST_IMAGE = "kuberl/worker:test"


def manifest(name: str, path: Path = REFERENCE, **spec_edits: Any) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    doc["metadata"] = {"name": name}
    for dotted, value in spec_edits.items():
        node = doc["spec"]
        *parents, last = dotted.split("__")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return doc


def status(kc: Kubectl, name: str) -> dict[str, Any]:
    job = kc.get("rltrainingjob", name)
    return (job or {}).get("status") or {}


def wait_phase(kc: Kubectl, name: str, phase: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (s := status(kc, name)).get("phase") == phase and s, timeout,
                    what=f"{name} phase {phase} (status: {status(kc, name)})")


def wait_rayjob(kc: Kubectl, name: str, timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: kc.get("rayjob", name), timeout, what=f"RayJob {name}")


def kuberay(kc: Kubectl, name: str, **fields: Any) -> None:
    """Play KubeRay: merge-patch the RayJob's status."""
    kc.patch("rayjob", name, {"status": fields}, subresource="status")


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == type_)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_each_example_becomes_a_rayjob_checked_field_by_field(
    operator: OperatorProcess, ns_kubectl: Kubectl, namespace: str
) -> None:
    kc = ns_kubectl
    jobs = {f"ex{i}-{p.stem}"[:40].rstrip("-"): p for i, p in enumerate(EXAMPLE_FILES)}
    kc.apply([manifest(name, path) for name, path in jobs.items()])
    for name in jobs:
        rayjob = wait_rayjob(kc, name)
        stored = kc.get("rltrainingjob", name)
        job = parse_job({k: stored[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        check_rayjob(rayjob, job, default_image=TEST_IMAGE)
        uid = stored["metadata"]["uid"]
        for kind, child in [("rayjob", name), ("configmap", f"{name}-config"),
                            ("serviceaccount", f"{name}-driver"), ("role", f"{name}-driver"),
                            ("rolebinding", f"{name}-driver")]:
            obj = wait_for(lambda kind=kind, child=child: kc.get(kind, child), what=f"{kind} {child}")
            (owner,) = obj["metadata"]["ownerReferences"]
            assert (owner["uid"], owner["controller"], owner["kind"]) == (uid, True, "RLTrainingJob")
        config = yaml.safe_load(kc.get("configmap", f"{name}-config")["data"]["job.yaml"])
        assert parse_job(config).spec == job.spec
        st = wait_phase(kc, name, "Pending")
        assert st["rayJobName"] == name
        assert condition(st, "Created")["status"] == "True"
        assert st["observedGeneration"] == stored["metadata"]["generation"]


def test_driver_account_may_patch_only_its_jobs_status(
    operator: OperatorProcess, ns_kubectl: Kubectl, namespace: str
) -> None:
    kc = ns_kubectl
    kc.apply(manifest("rbac"))
    wait_for(lambda: kc.get("rolebinding", "rbac-driver"), what="driver RoleBinding")
    who = f"--as=system:serviceaccount:{namespace}:rbac-driver"

    def can(*args: str) -> str:
        return kc.run("auth", "can-i", *args, who, check=False).stdout.strip()

    assert can("patch", "rltrainingjobs.kuberl.io/rbac", "--subresource=status") == "yes"
    assert can("get", "rltrainingjobs.kuberl.io/rbac", "--subresource=status") == "yes"
    assert can("patch", "rltrainingjobs.kuberl.io/rbac") == "no"  # the spec stays the user's
    assert can("patch", "rltrainingjobs.kuberl.io/other", "--subresource=status") == "no"
    assert can("list", "pods") == "no"


def test_rendered_rayjobs_pass_the_kuberay_schema(kubectl: Kubectl, namespace: str) -> None:
    """Server-side dry run against KubeRay's real RayJob CRD, for every example and variant."""
    kc = kubectl.in_namespace(namespace)
    variants = [manifest(f"dry{i}", p) for i, p in enumerate(EXAMPLE_FILES)]
    variants.append(manifest("dry-queue", cluster__queueName="h100", suspend=True))
    for doc in variants:
        doc["metadata"]["namespace"] = namespace
        job = parse_job(doc)
        rayjob = render_children(job, RenderSettings(default_image=TEST_IMAGE)).rayjob
        proc = kc.apply(rayjob, "--dry-run=server", check=False)
        assert proc.returncode == 0, proc.stderr
    broken = copy.deepcopy(rayjob)
    broken["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    assert kc.apply(broken, "--dry-run=server", check=False).returncode != 0  # the schema is live


def test_status_follows_rayjob_states_and_driver_progress(
    operator: OperatorProcess, ns_kubectl: Kubectl, namespace: str
) -> None:
    kc, name = ns_kubectl, "states"
    kc.apply(manifest(name))
    wait_rayjob(kc, name)
    wait_phase(kc, name, "Pending")

    kuberay(kc, name, jobDeploymentStatus="Initializing")
    wait_phase(kc, name, "Starting")

    cluster = f"{name}-x7k2p"
    kuberay(kc, name, jobDeploymentStatus="Running", jobStatus="PENDING", rayClusterName=cluster,
            dashboardURL=f"{cluster}-head-svc.{namespace}.svc.cluster.local:8265",
            rayClusterStatus={"conditions": [{
                "type": "RayClusterProvisioned", "status": "True", "reason": "AllPodRunningAndReady",
                "message": "", "lastTransitionTime": _now()}]})
    st = wait_phase(kc, name, "Starting")
    st = wait_for(lambda: (s := status(kc, name)).get("rayClusterName") and s, what="cluster name")
    assert condition(st, "ClusterReady")["status"] == "True"
    assert st["dashboardURL"] == f"http://{cluster}-head-svc.{namespace}.svc.cluster.local:8265"

    kuberay(kc, name, jobStatus="RUNNING")
    st = wait_phase(kc, name, "Running")
    assert condition(st, "Running")["status"] == "True"

    # The driver reports progress under its own ServiceAccount, with the worker's own patch body.
    body = progress_patch(ProgressReport(rollout_id=41, num_rollout=3000, reward=0.625,
                                         eval_score=0.25, checkpoint="/data/ckpt/iter_40"),
                          datetime.now(UTC))
    kc.run("patch", "rltrainingjob", name, "--subresource=status", "--type=merge",
           "-p", json.dumps(body), f"--as=system:serviceaccount:{namespace}:{name}-driver")
    table = wait_for(lambda: (out := kc.run("get", "rltj", name).stdout) and "42/3000" in out and out,
                     what="progress in kubectl get rltj")
    header, row = table.strip().splitlines()
    assert header.split()[:5] == ["NAME", "PHASE", "ROLLOUT", "REWARD", "EVAL"]
    assert row.split()[:5] == [name, "Running", "42/3000", "0.625", "0.25"]

    kuberay(kc, name, jobDeploymentStatus="Complete", jobStatus="SUCCEEDED")
    st = wait_phase(kc, name, "Succeeded")
    assert condition(st, "Succeeded")["status"] == "True"
    assert st["progress"]["lastCheckpoint"] == "/data/ckpt/iter_40"  # the operator kept the driver's

    def reasons() -> set[str]:
        return {e["reason"] for e in kc.list("events") if e["involvedObject"]["name"] == name}

    wait_for(lambda: {"Pending", "Starting", "Running", "Succeeded"} <= reasons(),
             what="an Event per phase change")


def test_failed_rayjob_fails_the_job_with_kuberays_reason_and_is_not_recreated(
    operator: OperatorProcess, ns_kubectl: Kubectl
) -> None:
    kc, name = ns_kubectl, "fails"
    kc.apply(manifest(name))
    wait_rayjob(kc, name)
    kuberay(kc, name, jobDeploymentStatus="Failed", jobStatus="FAILED", reason="DeadlineExceeded",
            message="The RayJob has passed the activeDeadlineSeconds.")
    st = wait_phase(kc, name, "Failed")
    failed = condition(st, "Failed")
    assert (failed["status"], failed["reason"]) == ("True", "DeadlineExceeded")
    assert "activeDeadlineSeconds" in failed["message"]
    wait_for(lambda: any(e["reason"] == "Failed" and e["type"] == "Warning"
                         for e in kc.list("events") if e["involvedObject"]["name"] == name),
             what="a Warning event for the failure")
    kc.run("delete", "rayjob", name)
    time.sleep(3 * operator.resync)
    assert kc.get("rayjob", name) is None  # a finished job is never restarted
    assert status(kc, name)["phase"] == "Failed"


def test_suspend_and_resume(operator: OperatorProcess, ns_kubectl: Kubectl) -> None:
    kc, name = ns_kubectl, "pause"
    kc.apply(manifest(name))
    wait_rayjob(kc, name)
    kuberay(kc, name, jobDeploymentStatus="Running", jobStatus="RUNNING")
    wait_phase(kc, name, "Running")

    kc.patch("rltrainingjob", name, {"spec": {"suspend": True}})
    wait_for(lambda: kc.get("rayjob", name)["spec"].get("suspend") is True, what="RayJob suspend")
    kuberay(kc, name, jobDeploymentStatus="Suspended", jobStatus="STOPPED")
    st = wait_phase(kc, name, "Suspended")
    assert condition(st, "Suspended")["status"] == "True"
    assert condition(st, "Running")["status"] == "False"

    kc.patch("rltrainingjob", name, {"spec": {"suspend": False}})
    wait_for(lambda: kc.get("rayjob", name)["spec"].get("suspend") is False, what="RayJob resume")
    kuberay(kc, name, jobDeploymentStatus="Initializing", jobStatus="")
    st = wait_phase(kc, name, "Starting")
    assert condition(st, "Suspended")["status"] == "False"


def test_num_rollout_change_takes_effect(operator: OperatorProcess, ns_kubectl: Kubectl) -> None:
    kc, name = ns_kubectl, "longer"
    kc.apply(manifest(name))
    wait_rayjob(kc, name)
    kc.patch("rltrainingjob", name, {"spec": {"rollout": {"numRollout": 5000}}})
    generation = kc.get("rltrainingjob", name)["metadata"]["generation"]

    def config_num_rollout() -> int:
        data = kc.get("configmap", f"{name}-config")["data"]["job.yaml"]
        return yaml.safe_load(data)["spec"]["rollout"]["numRollout"]

    wait_for(lambda: config_num_rollout() == 5000, what="numRollout in the ConfigMap")
    st = wait_for(lambda: (s := status(kc, name)).get("observedGeneration") == generation and s,
                  what="observedGeneration")
    assert st["rollout"] == "0/5000"


IMMUTABLE_EDITS = [
    ({"perf": {"tensorModelParallelSize": 1}}, "spec.perf cannot change"),
    ({"placement": {"rolloutNumGpus": 2}}, "spec.placement cannot change"),
    ({"model": {"hfCheckpoint": "/data/other"}}, "spec.model cannot change"),
    ({"cluster": {"image": "kuberl/worker:other"}}, "spec.cluster cannot change"),
    ({"rollout": {"batchSize": 16}}, "spec.rollout.batchSize cannot change"),
    ({"sglang": {"gpusPerEngine": 4}}, "spec.sglang cannot change"),
]


@pytest.mark.parametrize(("edit", "message"), IMMUTABLE_EDITS, ids=[m for _, m in IMMUTABLE_EDITS])
def test_changes_under_a_running_job_are_rejected_with_their_message(
    ns_kubectl: Kubectl, edit: dict[str, Any], message: str
) -> None:
    kc, name = ns_kubectl, "frozen"
    if kc.get("rltrainingjob", name) is None:
        kc.apply(manifest(name))
    proc = kc.patch("rltrainingjob", name, {"spec": edit}, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert "delete and recreate" in proc.stderr


ADMISSION_REFUSALS = [
    # (job name, spec edits, the field the message names)
    ("sglang-on-cpu", {"backends__device": "cpu"}, "spec.backends.device"),
    ("torch-tp", {"backends__trainer": "torch"}, "spec.perf"),
    ("server-arg-typo", {"sglang__serverArgs": {"memFractonStatic": 0.8}},
     "spec.sglang.serverArgs.memFractonStatic"),
    ("memory-above-one", {"sglang__serverArgs": {"memFractionStatic": 1.5}},
     "spec.sglang.serverArgs.memFractionStatic"),
]


@pytest.mark.parametrize(("name", "edits", "field"), ADMISSION_REFUSALS,
                         ids=[c[0] for c in ADMISSION_REFUSALS])
def test_operator_refuses_a_job_that_cannot_run_before_creating_its_rayjob(
    operator: OperatorProcess, ns_kubectl: Kubectl, name: str, edits: dict[str, Any], field: str
) -> None:
    """The apiserver accepts these (schema and CEL hold); the operator's admission does not."""
    kc = ns_kubectl
    kc.apply(manifest(name, **edits))
    st = wait_phase(kc, name, "Failed")
    assert st["reason"] == "InvalidSpec" and st["message"].startswith(f"{field}: "), st
    assert condition(st, "Failed")["status"] == "True"
    events = [e for e in kc.list("events") if e["involvedObject"]["name"] == name]
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" and field in e["message"]
               for e in events), events
    time.sleep(2 * operator.resync)  # resyncs must not create it later either
    assert kc.get("rayjob", name) is None
    assert kc.get("configmap", f"{name}-config") is None


def test_a_warning_is_an_event_and_the_job_still_runs(
    operator: OperatorProcess, ns_kubectl: Kubectl
) -> None:
    kc, name = ns_kubectl, "warned"
    kc.apply(manifest(name, checkpoint__save="/scratch/ckpt"))
    wait_rayjob(kc, name)
    wait_for(lambda: any(e["reason"] == "SpecWarning" and "spec.checkpoint.save" in e["message"]
                         for e in kc.list("events") if e["involvedObject"]["name"] == name),
             what="the SpecWarning event")


def test_rayjob_deleted_by_someone_else_is_recreated(
    operator: OperatorProcess, ns_kubectl: Kubectl
) -> None:
    kc, name = ns_kubectl, "phoenix"
    kc.apply(manifest(name))
    first = wait_rayjob(kc, name)["metadata"]["uid"]
    kc.run("delete", "rayjob", name)
    again = wait_for(lambda: (r := kc.get("rayjob", name)) and r["metadata"]["uid"] != first and r,
                     timeout=6 * operator.resync + 10, what="recreated RayJob")
    assert again["metadata"]["labels"]["kuberl.io/job-name"] == name
    wait_for(lambda: "RecreatingRayJob" in [
        e["reason"] for e in kc.list("events") if e["involvedObject"]["name"] == name],
        what="the RecreatingRayJob event")


@pytest.mark.slow
def test_deleting_the_job_garbage_collects_its_children(
    operator: OperatorProcess, ns_kubectl: Kubectl
) -> None:
    kc, name = ns_kubectl, "gone"
    kc.apply(manifest(name))
    wait_rayjob(kc, name)
    wait_for(lambda: kc.get("rolebinding", f"{name}-driver"), what="children")
    kc.run("delete", "rltrainingjob", name, "--wait=false")
    # kube-controller-manager's garbage collector follows the ownerReferences (it discovers new CRD
    # types on a periodic resync, hence the generous timeout).
    for kind, child in [("rayjob", name), ("configmap", f"{name}-config"),
                        ("serviceaccount", f"{name}-driver"), ("role", f"{name}-driver"),
                        ("rolebinding", f"{name}-driver")]:
        wait_for(lambda kind=kind, child=child: kc.get(kind, child) is None, timeout=120,
                 interval=1, what=f"{kind} {child} garbage-collected")
    assert kc.get("rltrainingjob", name) is None


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    operator: OperatorProcess, ns_kubectl: Kubectl
) -> None:
    kc = ns_kubectl
    names = [f"restart-{i}" for i in range(8)]
    kc.apply([manifest(n) for n in names])
    time.sleep(0.5)  # some reconciles are now half done
    operator.kill()
    operator.start()
    for n in names:
        wait_phase(kc, n, "Pending", timeout=40)
    for n in names:
        assert len(kc.list("rayjobs", f"kuberl.io/job-name={n}")) == 1
        assert len(kc.list("configmaps", f"kuberl.io/job-name={n}")) == 1
        job = kc.get("rltrainingjob", n)
        assert "kuberl.io/last-handled-configuration" in job["metadata"]["annotations"]
        assert not job["metadata"].get("finalizers")  # no finalizer: deletion never blocks on us


def test_metrics_report_reconciles_latency_and_jobs_by_phase(
    operator: OperatorProcess, ns_kubectl: Kubectl
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    kc = ns_kubectl
    kc.apply(manifest("metered"))
    wait_phase(kc, "metered", "Pending")

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        out = {}
        for family in text_string_to_metric_families(operator.metrics()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def jobs_match() -> dict | None:
        samples = scrape()
        phases: dict[str, int] = {}
        for job in kc.list("rltrainingjobs"):
            phase = (job.get("status") or {}).get("phase", "Unknown")
            phases[phase] = phases.get(phase, 0) + 1
        by_phase = {dict(lbl)["phase"]: v for (n, lbl), v in samples.items()
                    if n == "kuberl_operator_jobs"}
        ok = all(by_phase.get(p) == c for p, c in phases.items())
        return samples if ok else None

    samples = wait_for(jobs_match, what="jobs-by-phase gauge to match the cluster")
    assert samples[("kuberl_operator_reconciles_total", (("result", "ok"),))] >= 1
    assert samples[("kuberl_operator_reconcile_duration_seconds_count", (("result", "ok"),))] >= 1
    for kind in ("api", "transient", "spec", "internal"):
        assert ("kuberl_operator_errors_total", (("kind", kind),)) in samples


async def test_a_spec_the_operator_cannot_accept_fails_the_job_without_retry(
    kubectl: Kubectl, kubeconfig: str
) -> None:
    """A spec that passes the apiserver but not kuberl's own checks (an older CRD, say) ends Failed.

    Runs ``reconcile`` in-process against the real apiserver, in a namespace no operator watches.
    """
    import asyncio
    import uuid

    import kopf

    from kuberl.operator.apply import Kube
    from kuberl.operator.handlers import reconcile
    from kuberl.operator.settings import OperatorConfig

    namespace = f"invalid-{uuid.uuid4().hex[:6]}"
    kubectl.run("create", "namespace", namespace)
    kc = kubectl.in_namespace(namespace)
    try:
        kc.apply(manifest("odd"))
        body = kc.get("rltrainingjob", "odd")
        body["spec"]["placement"]["rolloutNumGpus"] = 3  # not whole 2-GPU engines
        kube = await Kube.connect(kubeconfig)
        memo = kopf.Memo(kube=kube, config=OperatorConfig(), inflight=asyncio.Semaphore(1))
        try:
            with pytest.raises(kopf.PermanentError, match="gpusPerEngine"):
                await reconcile(body, memo)
        finally:
            await kube.close()
        st = status(kc, "odd")
        assert (st["phase"], st["reason"]) == ("Failed", "InvalidSpec")
        assert "gpusPerEngine" in st["message"]
        assert next(c for c in st["conditions"] if c["type"] == "Failed")["status"] == "True"
        assert kc.get("rayjob", "odd") is None  # nothing was created for it
        events = [e for e in kc.list("events") if e["involvedObject"]["name"] == "odd"]
        assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events)
    finally:
        kubectl.run("delete", "namespace", namespace, "--wait=false", check=False)
