"""Report training progress into the RLTrainingJob's status (``status.progress``) from inside the cluster.

The driver runs under a ServiceAccount that may only get/patch ``rltrainingjobs/status`` in its namespace.
``progress_patch`` is pure; ``StatusReporter`` is the thin HTTP shell (a merge patch on the status
subresource). Outside a cluster the reporter is a no-op, so ``kuberl train`` on a laptop needs nothing.
"""

from __future__ import annotations

import logging
import os
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from kuberl.api.job import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class ProgressReport:
    """One rollout's outcome as the operator shows it (kubectl get rltj)."""

    rollout_id: int
    num_rollout: int | None
    reward: float | None = None
    eval_score: float | None = None
    checkpoint: str | None = None
    weight_version: int | None = None


def progress_patch(report: ProgressReport, now: datetime) -> dict[str, Any]:
    """Return the merge patch for ``rltrainingjobs/status``; fields left None are not touched."""
    progress: dict[str, Any] = {
        "rolloutId": report.rollout_id,
        "numRollout": report.num_rollout,
        "updatedAt": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if report.reward is not None:
        progress["lastReward"] = round(float(report.reward), 6)
    if report.eval_score is not None:
        progress["lastEvalScore"] = round(float(report.eval_score), 6)
    if report.checkpoint is not None:
        progress["lastCheckpoint"] = report.checkpoint
    if report.weight_version is not None:
        progress["weightVersion"] = report.weight_version
    done = report.rollout_id + 1
    total = report.num_rollout if report.num_rollout is not None else "?"
    return {"status": {"progress": progress, "rollout": f"{done}/{total}"}}


@dataclass(frozen=True)
class ApiTarget:
    """Where and how to reach the apiserver (in-cluster service account or an explicit token)."""

    server: str
    token: str | None
    ca_file: str | bool
    namespace: str
    name: str

    @property
    def status_url(self) -> str:
        return (
            f"{self.server}/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/{PLURAL}/"
            f"{self.name}/status"
        )


def in_cluster_target(name: str | None, namespace: str | None) -> ApiTarget | None:
    """Return the in-cluster target from the pod's environment, or None when not in a cluster."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
    name = name or os.environ.get("KUBERL_JOB_NAME")
    # Tests of the in-cluster path run outside a pod: they point this at a folder holding a real token.
    account = Path(os.environ.get("KUBERL_SERVICE_ACCOUNT_DIR") or SERVICE_ACCOUNT_DIR)
    token_file = account / "token"
    if not (host and port and name and token_file.exists()):
        return None
    namespace = (
        namespace
        or os.environ.get("KUBERL_JOB_NAMESPACE")
        or (account / "namespace").read_text().strip()
    )
    return ApiTarget(
        server=f"https://{host}:{port}",
        token=token_file.read_text().strip(),
        ca_file=str(account / "ca.crt"),
        namespace=namespace,
        name=name,
    )


class StatusReporter:
    """Patches progress into the job's status; failures are logged, never fatal to training."""

    def __init__(self, target: ApiTarget | None, client_cert: tuple[str, str] | None = None) -> None:
        self.target = target
        verify = (
            ssl.create_default_context(cafile=target.ca_file)
            if target and isinstance(target.ca_file, str) else True
        )
        self._client = (
            httpx.Client(verify=verify, cert=client_cert, timeout=10.0) if target else None
        )

    def report(self, report: ProgressReport, now: datetime | None = None) -> bool:
        """Send one progress patch; return whether the apiserver accepted it."""
        if self.target is None or self._client is None:
            return False
        headers = {"Content-Type": "application/merge-patch+json"}
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        body = progress_patch(report, now or datetime.now(UTC))
        for attempt in range(3):
            try:
                response = self._client.patch(self.target.status_url, json=body, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("status patch failed (attempt %d): %s", attempt + 1, exc)
                continue
            if response.status_code < 300:
                return True
            log.warning("status patch rejected: %s %s", response.status_code, response.text[:300])
            if response.status_code < 500 and response.status_code != 429:
                return False
        return False

    def desired_num_rollout(self) -> int | None:
        """Read ``spec.rollout.numRollout`` of the live job (the user may raise or lower it mid-run).

        The driver's Role allows get on ``rltrainingjobs/status``, which returns the whole object.
        """
        if self.target is None or self._client is None:
            return None
        headers = {"Authorization": f"Bearer {self.target.token}"} if self.target.token else {}
        try:
            response = self._client.get(self.target.status_url, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("reading the job failed: %s", exc)
            return None
        if response.status_code != 200:
            return None
        value = response.json().get("spec", {}).get("rollout", {}).get("numRollout")
        return int(value) if isinstance(value, int) else None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
