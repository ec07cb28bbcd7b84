"""Preempted by Kueue, re-admitted, resumed from the newest checkpoint: no rollout lost or repeated.

Real Kueue, the real KubeRay operator and the kuberl operator run against the local control plane
(``kueue_cluster``); the tiny job is queued in examples/kueue/h100-pool.yaml's LocalQueue with the
low WorkloadPriorityClass. Ray cannot run inside kwok's fake pods, so the driver runs here exactly as
tests/e2e/test_cluster_mode.py runs it (``python -m kuberl.worker`` in cluster mode on a local Ray
cluster, the operator's ConfigMap as its config, status patched with its own ServiceAccount token),
and this test plays the two things the pods would do:

- it starts the driver once Kueue admitted the job and KubeRay built its Ray cluster (KubeRay would
  submit it), and again after re-admission (KubeRay resubmits on the new cluster);
- it SIGKILLs the driver when KubeRay deletes the preempted job's Ray cluster (the pods die, and with
  them the driver, with no chance to checkpoint).

What differs from a GPU cluster: the driver's process is not literally inside the deleted pod, so the
kill follows the pod deletion by the poll interval (0.2 s) instead of the kubelet's grace period; the
local Ray cluster is one node carrying both role resources (separate raylets did not start within
Ray's fixed 30 s on the loaded 2-core machine); kwok keeps KubeRay's submitter pod Running (see
``running_job_pod_stages`` in tests/conftest.py) as a real ``ray job submit`` would be.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from kuberl.api import parse_job
from kuberl.devcluster import FAKE_NODE_TOLERATIONS, KUBERAY_NAMESPACE
from kuberl.operator.render import JOB_CONFIG_KEY, render_config_map
from kuberl.ray_resources import ROLLOUT_RESOURCE, TRAINER_RESOURCE
from kuberl.worker.data.cursor import PromptCursor
from tests.e2e.conftest import ROOT
from tests.e2e.test_cluster_mode import RAY_ENV
from tests.operator.conftest import Kubectl, OperatorProcess, wait_for
from tests.operator.test_kueue_real import job_manifest, pool_objects, ray_cluster_of, status

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NS = KUBERAY_NAMESPACE
NAME = "tiny-queued"
NUM_ROLLOUT, BATCH, SAVE_EVERY, SEED = 8, 8, 2, 7


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tiny_manifest(build: Path, shared: Path) -> dict[str, Any]:
    job = yaml.safe_load((ROOT / "examples/tiny/job.yaml").read_text())
    job["metadata"] = {"name": NAME, "namespace": NS,
                       "labels": {"kueue.x-k8s.io/priority-class": "rl-low"}}
    spec = job["spec"]
    spec["model"]["hfCheckpoint"] = str(build / "model")
    spec["rollout"].update(promptData=str(build / "train.jsonl"), numRollout=NUM_ROLLOUT,
                           batchSize=BATCH, shuffle=True, seed=SEED)
    spec["eval"] = {"datasets": []}  # no evaluation (a null interval is not valid YAML for the CRD)
    spec["checkpoint"] = {"save": str(shared / "checkpoints"), "saveInterval": SAVE_EVERY}
    spec["cluster"] = {"queueName": "h100", "storage": {"claimName": "shared", "mountPath": str(shared)},
                       "tolerations": [t for t in FAKE_NODE_TOLERATIONS
                                       if t["key"] != "nvidia.com/gpu"]}
    return job


def shared_claim(path: Path) -> list[dict[str, Any]]:
    """The job's shared volume: a hostPath PersistentVolume bound to the claim ``shared``."""
    return [
        {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "tiny-queued-shared"},
         "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                  "storageClassName": "", "hostPath": {"path": str(path)},
                  "claimRef": {"namespace": NS, "name": "shared"}}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
         "metadata": {"name": "shared", "namespace": NS},
         "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "",
                  "volumeName": "tiny-queued-shared", "resources": {"requests": {"storage": "1Gi"}}}},
    ]


class Driver:
    """``python -m kuberl.worker`` as the RayJob's entrypoint runs it, in its own process group."""

    def __init__(self, cluster: Any, kc: Kubectl, job: dict[str, Any], ray_address: str,
                 work: Path) -> None:
        self.work, self.run_dir = work, work / "run"
        config_dir = work / "etc-kuberl"
        config_dir.mkdir(parents=True, exist_ok=True)
        self.config = config_dir / JOB_CONFIG_KEY
        self.config.write_text(render_config_map(parse_job(job))["data"][JOB_CONFIG_KEY])
        server = yaml.safe_load(Path(cluster.kubeconfig).read_text())["clusters"][0]["cluster"]
        account = work / "serviceaccount"
        account.mkdir(exist_ok=True)
        # The operator created the driver's ServiceAccount and Role; the pod would mount its token.
        wait_for(lambda: kc.get("serviceaccount", f"{NAME}-driver"), what="the driver account")
        (account / "token").write_text(kc.run("create", "token", f"{NAME}-driver").stdout.strip())
        (account / "namespace").write_text(NS)
        (account / "ca.crt").write_bytes(Path(server["certificate-authority"]).read_bytes())
        api = urlparse(server["server"])
        self.env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_address,
                    "KUBERNETES_SERVICE_HOST": api.hostname or "",
                    "KUBERNETES_SERVICE_PORT": str(api.port), "KUBERL_SERVICE_ACCOUNT_DIR": str(account),
                    "KUBERL_JOB_NAME": NAME, "KUBERL_JOB_NAMESPACE": NS, "KUBERL_ROLE": "head"}
        self.env.pop("KUBERL_WEIGHT_SYNC", None)
        self.proc: subprocess.Popen[str] | None = None
        self.runs = 0

    def start(self) -> None:
        self.runs += 1
        log = (self.work / f"driver-{self.runs}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kuberl.worker", "--config", str(self.config),
             "--run-dir", str(self.run_dir), "--metrics-port", "0"],
            stdout=log, stderr=subprocess.STDOUT, text=True, env=self.env, cwd=self.work,
            start_new_session=True)

    def kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def log(self) -> str:
        return (self.work / f"driver-{self.runs}.log").read_text()[-6000:]


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """One Ray node advertising both the trainer and the rollout resource (the operator's pods each
    advertise one; tests/e2e/test_cluster_mode.py covers separate raylets). Ray gives a raylet a
    fixed 30 s to register, which a loaded 2-core machine can exceed, so the start is retried."""
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    from ray.cluster_utils import Cluster

    for attempt in range(4):
        cluster = Cluster()
        try:
            cluster.add_node(num_cpus=4, include_dashboard=False,
                             resources={TRAINER_RESOURCE: 1, ROLLOUT_RESOURCE: 1})
            cluster.wait_for_nodes(timeout=600)
            break
        except Exception:
            cluster.shutdown()
            if attempt == 3:
                raise
    try:
        yield cluster.address
    finally:
        cluster.shutdown()


@pytest.fixture
def kc(kueue_cluster: Any) -> Iterator[Kubectl]:
    kc = Kubectl(str(kueue_cluster.kubeconfig), NS, kueue_cluster.kubectl_binary)
    kc.apply(pool_objects(NS), "--force-conflicts")  # other tests applied it too
    yield kc
    kc.run("delete", "rltj", "--all", "--wait=false", check=False)
    kc.run("delete", "pvc", "shared", "--wait=false", check=False)
    kc.run("delete", "pv", "tiny-queued-shared", "--wait=false", check=False)
    # The next queue test in this session needs the pool's quota free again.
    wait_for(lambda: not kc.list("rayjobs") and not kc.list("workloads"), timeout=90,
             interval=0.5, what="the e2e's RayJobs and Workloads to be gone")


@pytest.fixture
def operator(kueue_cluster: Any, kc: Kubectl, tmp_path: Path) -> Iterator[OperatorProcess]:
    op = OperatorProcess(str(kueue_cluster.kubeconfig), None, tmp_path / "operator.log")
    op.start()
    yield op
    op.stop()


def test_preempted_job_resumes_from_its_newest_checkpoint_without_losing_or_repeating_rollouts(
    kueue_cluster: Any, kc: Kubectl, operator: OperatorProcess, ray_cluster: str,
    easy_tiny_build: Path, tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    ckpt_root = shared / "checkpoints"
    kc.apply(shared_claim(shared))
    job = tiny_manifest(easy_tiny_build, shared)
    kc.apply(job)

    def admitted_with_cluster() -> bool:
        st = status(kc, NAME)
        return st.get("phase") in ("Starting", "Running") and bool(ray_cluster_of(kc, NAME))

    wait_for(admitted_with_cluster, timeout=120, interval=0.5,
             what=f"Kueue to admit the tiny job and KubeRay to build its Ray cluster: {status(kc, NAME)}")
    driver = Driver(kueue_cluster, kc, job, ray_cluster, tmp_path)
    samples = driver.run_dir / "samples.jsonl"
    driver.start()
    try:
        def checkpointed_and_training() -> bool:
            assert driver.proc is not None and driver.proc.poll() is None, driver.log()
            return ((ckpt_root / f"rollout_{SAVE_EVERY - 1:06d}").is_dir() and samples.exists()
                    and any(r["rollout_id"] >= SAVE_EVERY for r in read_jsonl(samples)))

        wait_for(checkpointed_and_training, timeout=900, interval=0.2,
                 what="the first checkpoint and a rollout after it")

        # A release run with the high WorkloadPriorityClass needs all 8 GPUs of the pool.
        kc.apply(job_manifest("release", trainer_gpus=4, rollout_gpus=4, priority="rl-high"))
        wait_for(lambda: not ray_cluster_of(kc, NAME), timeout=120, interval=0.2,
                 what="Kueue to evict the tiny job and KubeRay to delete its Ray cluster")
        driver.kill()  # its pods are gone: so is the driver
    except BaseException:
        driver.kill()
        raise
    killed = read_jsonl(samples)
    newest = max(int(p.name.split("_")[1]) for p in ckpt_root.glob("rollout_*"))
    assert newest < NUM_ROLLOUT - 1, "the job finished before it was preempted: nothing to resume"

    st = wait_for(lambda: (s := status(kc, NAME)).get("phase") == "Queued" and s, timeout=60,
                  what="the preempted job back in the queue")
    assert st["reason"] == "Preempted" and "evicted by Kueue (Preempted)" in st["message"], st
    assert next(c for c in st["conditions"] if c["type"] == "Admitted")["status"] == "False"
    assert (kc.get("rayjob", NAME) or {})["spec"]["suspend"] is True
    time.sleep(3)
    assert not ray_cluster_of(kc, NAME), "a queued job must hold no Ray cluster"

    kc.run("delete", "rltj", "release", "--wait=false")  # the release run leaves: re-admission
    wait_for(admitted_with_cluster, timeout=120, interval=0.5,
             what=f"re-admission and a new Ray cluster: {status(kc, NAME)}")
    driver.start()  # KubeRay submits the job again on the new cluster
    assert driver.proc is not None
    assert driver.proc.wait(timeout=1200) == 0, driver.log()

    # The samples.jsonl audit: the second run starts right after the newest checkpoint, and every
    # rollout trained exactly the prompts the data order assigns it (a rollout the kill interrupted
    # after the checkpoint is redone with the same prompts, never skipped).
    records = read_jsonl(samples)[len(killed):]
    assert [r["rollout_id"] for r in records] == list(range(newest + 1, NUM_ROLLOUT))
    prompts = sum(1 for line in (easy_tiny_build / "train.jsonl").read_text().splitlines() if line)
    order = PromptCursor(prompts, shuffle=True, seed=SEED).order(0)
    final: dict[int, list[int]] = {}
    for r in killed + records:
        final[r["rollout_id"]] = r["rows"]
    assert sorted(final) == list(range(NUM_ROLLOUT))
    for rollout_id, rows in final.items():
        assert sorted(rows) == sorted(order[rollout_id * BATCH:(rollout_id + 1) * BATCH]), rollout_id
    for r in killed:
        if r["rollout_id"] > newest:  # trained after the checkpoint, lost with the pod, redone
            assert sorted(r["rows"]) == sorted(final[r["rollout_id"]])
    assert (ckpt_root / f"rollout_{NUM_ROLLOUT - 1:06d}").is_dir()
    progress = wait_for(lambda: (p := status(kc, NAME).get("progress") or {}).get("rolloutId")
                        == NUM_ROLLOUT - 1 and p, what="the driver's final progress in the status")
    assert progress["weightVersion"] == NUM_ROLLOUT
