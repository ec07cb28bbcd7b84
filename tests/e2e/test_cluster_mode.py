"""The closest thing to the pods that runs here: ``python -m kuberl.worker`` in cluster mode on CPU.

A Ray head plus two Ray worker processes that advertise ``kuberl_trainer`` / ``kuberl_rollout`` (as the
operator's pods do), a shared storage folder (the PVC), the real smg router, status patched through a
real apiserver with the driver's own ServiceAccount token, the entrypoint and ConfigMap the RayJob uses,
and weights synced every rollout over the distributed transport (gloo). The tiny model must learn.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from kuberl.api import parse_job
from kuberl.operator.render import JOB_CONFIG_KEY, render_config_map, render_driver_rbac
from kuberl.ray_resources import ROLLOUT_RESOURCE, TRAINER_RESOURCE
from tests.e2e.conftest import ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

NUM_ROLLOUT = 20
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0"}


@pytest.fixture
def ray_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A Ray head and two worker nodes (separate raylet processes, as on separate pods), started with
    Ray's own multi-node helper, which keeps their ports apart on one machine."""
    for key, value in RAY_ENV.items():
        monkeypatch.setenv(key, value)
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2, resources={TRAINER_RESOURCE: 1})
        cluster.add_node(num_cpus=2, resources={ROLLOUT_RESOURCE: 1})
        cluster.wait_for_nodes(timeout=600)
        yield cluster.address
    finally:
        cluster.shutdown()


def cluster_manifest(build: Path, shared: Path, name: str, namespace: str) -> dict:
    job = yaml.safe_load((ROOT / "examples/tiny/job.yaml").read_text())
    job["metadata"] = {"name": name, "namespace": namespace}
    spec = job["spec"]
    spec["model"]["hfCheckpoint"] = str(build / "model")
    spec["rollout"].update(promptData=str(build / "train.jsonl"), numRollout=NUM_ROLLOUT, batchSize=16)
    spec["eval"] = {"interval": None, "datasets": []}
    spec["optimizer"] = {"lr": 3.0e-3, "adamBeta2": 0.98, "weightDecay": 0.0}
    spec["checkpoint"] = {"save": str(shared / "checkpoints"), "saveInterval": 10}
    spec["cluster"] = {"storage": {"claimName": "shared", "mountPath": str(shared)}}
    spec["sglang"] = {"routerArgs": {"logLevel": "warn"}}
    return job


def test_worker_entrypoint_in_cluster_mode_learns_over_the_router_with_distributed_sync(
    kube_cluster, ray_cluster: str, easy_tiny_build: Path, tmp_path: Path
) -> None:
    ns = f"e2e-{uuid.uuid4().hex[:8]}"
    name = "tiny-cluster"
    shared = tmp_path / "shared"
    shared.mkdir()
    manifest = cluster_manifest(easy_tiny_build, shared, name, ns)
    kube_cluster.kubectl("create", "namespace", ns)
    try:
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        job = parse_job(manifest)
        for obj in render_driver_rbac(job):
            kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
        # The pod's view: the operator's ConfigMap mounted as a file, a ServiceAccount token folder.
        config_dir = tmp_path / "etc-kuberl"
        config_dir.mkdir()
        config_file = config_dir / JOB_CONFIG_KEY
        config_file.write_text(render_config_map(job)["data"][JOB_CONFIG_KEY])
        kubeconfig = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
        server = kubeconfig["clusters"][0]["cluster"]
        account = tmp_path / "serviceaccount"
        account.mkdir()
        (account / "token").write_text(
            kube_cluster.kubectl("create", "token", f"{name}-driver", "-n", ns).stdout.strip())
        (account / "namespace").write_text(ns)
        (account / "ca.crt").write_bytes(Path(server["certificate-authority"]).read_bytes())
        api = urlparse(server["server"])
        env = {**os.environ, **RAY_ENV, "RAY_ADDRESS": ray_cluster,
               "KUBERNETES_SERVICE_HOST": api.hostname or "", "KUBERNETES_SERVICE_PORT": str(api.port),
               "KUBERL_SERVICE_ACCOUNT_DIR": str(account), "KUBERL_JOB_NAME": name,
               "KUBERL_JOB_NAMESPACE": ns, "KUBERL_ROLE": "head"}
        env.pop("KUBERL_WEIGHT_SYNC", None)
        run_dir = tmp_path / "run"
        # operator/render.py's ENTRYPOINT, with a free metrics port instead of 9400.
        proc = subprocess.run(
            [sys.executable, "-m", "kuberl.worker", "--config", str(config_file),
             "--run-dir", str(run_dir), "--metrics-port", "0"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800,
        )
        assert proc.returncode == 0, proc.stderr[-6000:]
        assert "router at http://" in proc.stderr
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rewards = [r["rollout/reward_mean"] for r in rows if "rollout/reward_mean" in r]
        assert len(rewards) == NUM_ROLLOUT
        first, last = statistics.fmean(rewards[:5]), statistics.fmean(rewards[-5:])
        assert last > first + 0.1, rewards
        assert [r["progress/weight_version"] for r in rows] == list(range(1, NUM_ROLLOUT + 1))
        assert all(r["time/weight_sync_s"] > 0 for r in rows)
        assert (shared / "checkpoints" / f"rollout_{NUM_ROLLOUT - 1:06d}").is_dir()
        status = json.loads(kube_cluster.kubectl("get", "rltj", name, "-n", ns, "-o", "json").stdout)
        progress = status["status"]["progress"]
        assert progress["weightVersion"] == NUM_ROLLOUT and progress["rolloutId"] == NUM_ROLLOUT - 1
        assert status["status"]["rollout"] == f"{NUM_ROLLOUT}/{NUM_ROLLOUT}"
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
