"""Queued RLTrainingJobs against real Kueue (v0.17) and the real KubeRay operator on fake 8×H100 nodes.

The pool is examples/kueue/h100-pool.yaml: one ClusterQueue with 8 ``nvidia.com/gpu`` while the
cluster physically has 16 (two kwok nodes), so every "waits" below is Kueue's quota at work, not the
scheduler running out of GPUs. Ray never runs on kwok pods, so an admitted job stops at Starting
(its Ray cluster up, the driver pending), which is as far as a cluster without GPUs can go.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.devcluster import FAKE_NODE_TOLERATIONS, KUBERAY_NAMESPACE
from tests.operator.conftest import Kubectl, OperatorProcess, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = yaml.safe_load((ROOT / "examples" / "glm4-9b-dapo-math.yaml").read_text())
POOL = ROOT / "examples" / "kueue" / "h100-pool.yaml"
QUEUE = "h100"
ADMITTED_PHASES = ("Starting", "Running")


def pool_objects(namespace: str) -> list[dict[str, Any]]:
    """The example's objects, its LocalQueue moved into ``namespace``."""
    docs = [d for d in yaml.safe_load_all(POOL.read_text()) if d]
    for doc in docs:
        if doc["kind"] == "LocalQueue":
            doc["metadata"]["namespace"] = namespace
    return docs


def job_manifest(name: str, *, trainer_gpus: int = 4, rollout_gpus: int = 4,
                 priority: str | None = None, queue_label: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(REFERENCE)
    doc["metadata"] = {"name": name, "labels": {}}
    if priority:
        doc["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = priority
    cluster = doc["spec"]["cluster"]
    if queue_label:  # what Kueue users put on the objects they submit
        doc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = QUEUE
    else:
        cluster["queueName"] = QUEUE
    cluster.pop("storage")  # no PersistentVolumes on fake nodes
    cluster["tolerations"] = [t for t in FAKE_NODE_TOLERATIONS if t["key"] != "nvidia.com/gpu"]
    cluster["cpusPerGpu"], cluster["memoryPerGpuGi"] = 2, 16
    doc["spec"]["placement"].update(actorNumGpusPerNode=trainer_gpus, rolloutNumGpus=rollout_gpus)
    return doc


@pytest.fixture(scope="module")
def kc(kueue_cluster: Any) -> Iterator[Kubectl]:
    kc = Kubectl(str(kueue_cluster.kubeconfig), KUBERAY_NAMESPACE, kueue_cluster.kubectl_binary)
    kc.apply(pool_objects(KUBERAY_NAMESPACE), "--force-conflicts")  # other tests applied it too
    yield kc


@pytest.fixture(scope="module")
def operator(kueue_cluster: Any, kc: Kubectl, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[OperatorProcess]:
    op = OperatorProcess(str(kueue_cluster.kubeconfig), None,
                         tmp_path_factory.mktemp("operator-kueue") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def clean(kc: Kubectl) -> Iterator[None]:
    """Each test starts and ends with no job, Workload or Ray cluster holding quota."""
    yield
    kc.run("delete", "rltj", "--all", "--wait=false")
    wait_for(lambda: not kc.list("rayjobs") and not kc.list("workloads")
             and not kc.list("rayclusters"), timeout=90, interval=0.5,
             what="every RayJob, Workload and Ray cluster to be gone")


def status(kc: Kubectl, name: str) -> dict[str, Any]:
    return (kc.get("rltj", name) or {}).get("status") or {}


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def wait_phase(kc: Kubectl, name: str, phases: tuple[str, ...] | str, reason: str | None = None,
               timeout: float = 90) -> dict[str, Any]:
    wanted = (phases,) if isinstance(phases, str) else phases
    return wait_for(lambda: (st := status(kc, name)).get("phase") in wanted
                    and (reason is None or st.get("reason") == reason) and st,
                    timeout=timeout, interval=0.5,
                    what=f"{name} in {wanted} (reason {reason}); rayjob: "
                         f"{(kc.get('rayjob', name) or {}).get('status')}")


def pods_of(kc: Kubectl, name: str) -> list[dict[str, Any]]:
    return kc.list("pods", f"kuberl.io/job-name={name}")


def ray_cluster_of(kc: Kubectl, name: str) -> list[dict[str, Any]]:
    return [c for c in kc.list("rayclusters")
            if any(o["name"] == name for o in c["metadata"].get("ownerReferences") or [])]


def workload_of(kc: Kubectl, name: str) -> dict[str, Any]:
    rayjob = kc.get("rayjob", name)
    assert rayjob is not None
    uid = rayjob["metadata"]["uid"]
    found = kc.list("workloads", f"kueue.x-k8s.io/job-uid={uid}")
    assert len(found) == 1, found
    return found[0]


def running_gpu_pods(kc: Kubectl, name: str) -> int:
    return sum(1 for p in pods_of(kc, name) if p["status"].get("phase") == "Running"
               and p["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu"))


def test_two_8_gpu_jobs_one_runs_one_waits_with_kueues_reason_until_the_first_is_deleted(
        operator: OperatorProcess, kc: Kubectl, clean: None) -> None:
    kc.apply(job_manifest("first"))
    wait_phase(kc, "first", ADMITTED_PHASES)
    wait_for(lambda: running_gpu_pods(kc, "first") == 2, timeout=90, interval=0.5,
             what="the first job's trainer and rollout pods Running on H100 nodes")
    assert condition(status(kc, "first"), "Admitted")["status"] == "True"
    assert workload_of(kc, "first")["status"]["admission"]["clusterQueue"] == "h100-pool"

    kc.apply(job_manifest("second", queue_label=True))  # the label works as the spec field does
    st = wait_phase(kc, "second", "Queued", "WaitingForAdmission")
    admitted = condition(st, "Admitted")
    assert admitted["status"] == "False"
    assert "insufficient unused quota for nvidia.com/gpu in flavor h100" in admitted["message"], st
    assert "LocalQueue h100" in st["message"] and "nvidia.com/gpu" in st["message"]
    rayjob = kc.get("rayjob", "second")
    assert rayjob is not None and rayjob["spec"]["suspend"] is True
    assert rayjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == QUEUE
    assert not pods_of(kc, "second") and not ray_cluster_of(kc, "second")
    # A spec change re-applies the RayJob (server-side apply): it must stay suspended, because
    # kuberl's applied field set never held `suspend` (the RayJob was created suspended by POST).
    fields = json.loads(kc.run("get", "rayjob", "second", "-o", "json",
                               "--show-managed-fields").stdout)["metadata"]["managedFields"]
    applied = [m for m in fields
               if m["manager"] == "kuberl" and m["operation"] == "Apply"]
    assert applied and "f:suspend" not in applied[0]["fieldsV1"].get("f:spec", {})
    kc.patch("rltj", "second", {"spec": {"rollout": {"numRollout": 3001}}})
    wait_for(lambda: (kc.get("configmap", "second-config") or {}).get("data", {}).get(
        "job.yaml", "").count("3001"), timeout=30, what="the operator to re-apply the children")
    time.sleep(2)
    assert (kc.get("rayjob", "second") or {})["spec"]["suspend"] is True
    assert status(kc, "second")["phase"] == "Queued" and not pods_of(kc, "second")

    table = kc.run("get", "rltj").stdout.splitlines()
    assert table[0].split()[:6] == ["NAME", "PHASE", "ROLLOUT", "REWARD", "EVAL", "REASON"]
    row = next(line.split() for line in table if line.startswith("second "))
    assert row[1] == "Queued" and "WaitingForAdmission" in row, table

    kc.run("delete", "rltj", "first", "--wait=false")
    wait_phase(kc, "second", ADMITTED_PHASES)
    wait_for(lambda: running_gpu_pods(kc, "second") == 2, timeout=90, interval=0.5,
             what="the second job's pods once the first released the quota")
    assert condition(status(kc, "second"), "Admitted")["status"] == "True"


def test_gang_admission_a_job_larger_than_the_quota_gets_no_pods_at_all(
        operator: OperatorProcess, kc: Kubectl, clean: None) -> None:
    # 8 trainer + 4 rollout GPUs: the nodes have 16 free GPUs, the queue allows 8. Without
    # all-or-nothing admission the trainer pod would start and hold 8 GPUs waiting for the rest.
    kc.apply(job_manifest("big", trainer_gpus=8, rollout_gpus=4))
    st = wait_phase(kc, "big", "Queued", "WaitingForAdmission")
    assert "nvidia.com/gpu" in condition(st, "Admitted")["message"], st
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert not pods_of(kc, "big") and not ray_cluster_of(kc, "big")
        time.sleep(1)
    assert status(kc, "big")["phase"] == "Queued"
    assert (kc.get("rayjob", "big") or {})["spec"]["suspend"] is True


def test_a_higher_priority_job_preempts_the_running_one_which_comes_back_when_it_leaves(
        operator: OperatorProcess, kc: Kubectl, clean: None) -> None:
    kc.apply(job_manifest("victim", priority="rl-low"))
    wait_phase(kc, "victim", ADMITTED_PHASES)
    wait_for(lambda: ray_cluster_of(kc, "victim"), timeout=60, interval=0.5,
             what="the victim's Ray cluster")

    kc.apply(job_manifest("urgent", priority="rl-high"))
    st = wait_phase(kc, "victim", "Queued", "Preempted")
    assert "evicted by Kueue (Preempted)" in st["message"], st
    assert "newest checkpoint" in st["message"]
    assert condition(st, "Admitted")["reason"] == "Preempted"
    wait_phase(kc, "urgent", ADMITTED_PHASES)
    wait_for(lambda: not ray_cluster_of(kc, "victim"), timeout=90, interval=0.5,
             what="KubeRay to delete the preempted job's Ray cluster")
    assert (kc.get("rayjob", "victim") or {})["spec"]["suspend"] is True
    assert workload_of(kc, "urgent")["spec"]["priority"] == 1000
    events = {e["reason"] for e in kc.list("events")
              if e["involvedObject"]["name"] == "victim" and e["involvedObject"]["kind"] ==
              "RLTrainingJob"}
    assert "Queued" in events  # the operator announced the way back into the queue

    kc.run("delete", "rltj", "urgent", "--wait=false")
    wait_phase(kc, "victim", ADMITTED_PHASES)
    wait_for(lambda: ray_cluster_of(kc, "victim"), timeout=90, interval=0.5,
             what="a new Ray cluster for the re-admitted job")
    assert condition(status(kc, "victim"), "Admitted")["status"] == "True"


def test_spec_suspend_of_a_queued_job_deactivates_its_workload_and_releases_the_quota(
        operator: OperatorProcess, kc: Kubectl, clean: None) -> None:
    kc.apply(job_manifest("pausable"))
    wait_phase(kc, "pausable", ADMITTED_PHASES)
    kc.patch("rltj", "pausable", {"spec": {"suspend": True}})
    wait_phase(kc, "pausable", "Suspended")
    assert workload_of(kc, "pausable")["spec"]["active"] is False
    wait_for(lambda: not ray_cluster_of(kc, "pausable"), timeout=90, interval=0.5,
             what="the suspended job's Ray cluster to go")
    kc.apply(job_manifest("meanwhile"))  # the quota is free again
    wait_phase(kc, "meanwhile", ADMITTED_PHASES)
    kc.run("delete", "rltj", "meanwhile", "--wait=false")
    kc.patch("rltj", "pausable", {"spec": {"suspend": False}})
    wait_phase(kc, "pausable", ADMITTED_PHASES)
    assert workload_of(kc, "pausable")["spec"]["active"] is True
