"""The driver's real HTTP status reporter, under the driver's own ServiceAccount, on a real apiserver."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml

from kuberl.api import parse_job
from kuberl.operator.render import render_driver_rbac
from kuberl.worker.progress import ApiTarget, ProgressReport, StatusReporter
from tests.api.cases import valid_manifest

pytestmark = pytest.mark.cluster


def test_reporter_patches_progress_and_reads_num_rollout_with_the_driver_token(kube_cluster) -> None:
    ns = f"drv-{uuid.uuid4().hex[:8]}"
    kube_cluster.kubectl("create", "namespace", ns)
    try:
        manifest = valid_manifest()
        manifest["metadata"] = {"name": "prog", "namespace": ns}
        kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        for obj in render_driver_rbac(parse_job(manifest)):
            kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
        token = kube_cluster.kubectl("create", "token", "prog-driver", "-n", ns).stdout.strip()
        config = yaml.safe_load(Path(kube_cluster.kubeconfig).read_text())
        cluster = config["clusters"][0]["cluster"]

        def reporter(name: str) -> StatusReporter:
            return StatusReporter(ApiTarget(server=cluster["server"], token=token,
                                            ca_file=cluster["certificate-authority"],
                                            namespace=ns, name=name))

        ours = reporter("prog")
        assert ours.report(ProgressReport(rollout_id=9, num_rollout=3000, reward=0.5, weight_version=10))
        table = kube_cluster.kubectl("get", "rltj", "prog", "-n", ns).stdout
        assert "10/3000" in table and "0.5" in table
        assert ours.desired_num_rollout() == 3000
        kube_cluster.kubectl("patch", "rltj", "prog", "-n", ns, "--type=merge",
                             "-p", json.dumps({"spec": {"rollout": {"numRollout": 3500}}}))
        assert ours.desired_num_rollout() == 3500  # a raised numRollout reaches the running driver
        # The token is good for this job's status only.
        assert reporter("someone-else").report(ProgressReport(rollout_id=0, num_rollout=1)) is False
        ours.close()
    finally:
        kube_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
