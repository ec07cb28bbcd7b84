"""The operator's few API calls: server-side apply of children, reads, and status merge patches.

Server-side apply with one field manager ("kuberl") makes every write idempotent: applying the same
children twice, or after a crash half-way through, converges on one copy of each. Transient failures
(conflicts, throttling, 5xx, dropped connections) are retried here with a short backoff and then surface
as ``TransientApiError`` for kopf to retry later.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from kuberl.api.job import API_VERSION, PLURAL
from kuberl.operator.kueue import WORKLOAD_GROUP, WORKLOAD_VERSIONS
from kuberl.operator.labels import MANAGER

log = logging.getLogger(__name__)
T = TypeVar("T")

FIELD_MANAGER = MANAGER
RETRIABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})

# kind -> plural for everything the operator writes (all namespaced).
PLURALS = {
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "RayJob": "rayjobs",
    "RLTrainingJob": PLURAL,
    "Event": "events",
    "Pod": "pods",
}
EVENT_SOURCE = "kuberl-operator"
REPORTING_INSTANCE = (os.environ.get("HOSTNAME") or "kuberl-operator")[:128]  # the operator pod


class TransientApiError(Exception):
    """The apiserver kept failing with a retriable error; try the whole reconcile again later."""


@dataclass(frozen=True)
class ApiError(Exception):
    """A non-retriable API answer (e.g. 422 Invalid), with the apiserver's message."""

    status: int
    message: str

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    """Return the REST path of a namespaced object (or its collection when ``name`` is None)."""
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{prefix}/namespaces/{namespace}/{PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def _message(exc: ApiException) -> str:
    import json

    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)


async def with_retries(
    call: Callable[[], Awaitable[T]], *, attempts: int = 4, first_delay: float = 0.2
) -> T:
    """Run ``call``; retry conflicts, throttling, 5xx and connection errors with exponential backoff."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except ApiException as exc:
            if exc.status not in RETRIABLE_STATUS:
                raise ApiError(exc.status, _message(exc)) from None
            problem = f"{exc.status} {_message(exc)}"
        except (TimeoutError, aiohttp.ClientError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt == attempts:
            raise TransientApiError(problem)
        log.debug("retrying after %s (attempt %d)", problem, attempt)
        await asyncio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


class Kube:
    """A kubernetes-asyncio client narrowed to what the operator needs."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> Kube:
        """Use the in-cluster service account when present, else the kubeconfig (or $KUBECONFIG)."""
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config()
            return cls(client.ApiClient())
        return cls(await config.new_client_from_config(config_file=kubeconfig))

    async def close(self) -> None:
        await self.api.close()

    async def _call(self, path: str, method: str, *, body: Any = None,
                    query: list[tuple[str, str]] | None = None,
                    content_type: str | None = None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        return await self.api.call_api(
            path, method, query_params=query or [], header_params=headers, body=body,
            response_types_map={200: "object", 201: "object"}, auth_settings=["BearerToken"],
            _return_http_data_only=True,
        )

    async def apply(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        """Server-side apply ``obj`` (create or update) as field manager "kuberl"; return the stored object."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"], meta["name"])
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        if dry_run:
            query.append(("dryRun", "All"))
        return await with_retries(
            lambda: self._call(path, "PATCH", body=obj, query=query,
                               content_type="application/apply-patch+yaml")
        )

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create ``obj`` with a plain POST (field manager "kuberl", operation Update); None when it
        already exists. Used for a queued RayJob, whose first ``suspend: true`` must not become part
        of kuberl's applied field set (see render.creation_copy)."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta["namespace"])
        query = [("fieldManager", FIELD_MANAGER)]

        async def post() -> dict[str, Any] | None:
            try:
                return await self._call(path, "POST", body=obj, query=query,
                                        content_type="application/json")
            except ApiException as exc:
                if exc.status == 409:  # AlreadyExists: the usual case after the first reconcile
                    return None
                raise

        return await with_retries(post)

    async def list_workloads(self, namespace: str, selector: str) -> list[dict[str, Any]] | None:
        """Kueue Workloads in ``namespace`` matching ``selector`` (newest API version first); None when
        Kueue is not installed or kuberl may not read them (the chart grants get/list/watch)."""
        for version in WORKLOAD_VERSIONS:
            path = f"/apis/{WORKLOAD_GROUP}/{version}/namespaces/{namespace}/workloads"
            try:
                listing = await with_retries(
                    lambda path=path: self._call(path, "GET", query=[("labelSelector", selector)]))
            except ApiError as exc:
                if exc.status == 404:
                    continue
                if exc.status in (401, 403):
                    log.warning("cannot read Kueue workloads in %s: %s", namespace, exc)
                    return None
                raise
            return list(listing.get("items", []))
        return None

    async def patch_workload(self, workload: dict[str, Any], patch: dict[str, Any]) -> None:
        """Merge-patch a Kueue Workload (``spec.active`` follows the job's spec.suspend)."""
        meta = workload["metadata"]
        api_version = workload.get("apiVersion") or f"{WORKLOAD_GROUP}/{WORKLOAD_VERSIONS[0]}"
        path = f"/apis/{api_version}/namespaces/{meta['namespace']}/workloads/{meta['name']}"
        await with_retries(lambda: self._call(path, "PATCH", body=patch,
                                              content_type="application/merge-patch+json"))

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Return the object, or None when it does not exist."""
        path = object_path(api_version, kind, namespace, name)
        try:
            return await with_retries(lambda: self._call(path, "GET"))
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.get(API_VERSION, "RLTrainingJob", namespace, name)

    async def list_jobs(self, namespaces: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """Return every RLTrainingJob in ``namespaces`` (all namespaces when empty)."""
        paths = [object_path(API_VERSION, "RLTrainingJob", ns) for ns in namespaces] or [
            f"/apis/{API_VERSION}/{PLURAL}"
        ]
        jobs: list[dict[str, Any]] = []
        for path in paths:
            listing = await with_retries(lambda path=path: self._call(path, "GET"))
            for item in listing.get("items", []):
                item.setdefault("apiVersion", API_VERSION)
                item.setdefault("kind", "RLTrainingJob")
                jobs.append(item)
        return jobs

    async def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Return the pods in ``namespace`` matching the label ``selector`` (e.g. ``kuberl.io/job-name=x``)."""
        path = object_path("v1", "Pod", namespace)
        listing = await with_retries(lambda: self._call(path, "GET", query=[("labelSelector", selector)]))
        return list(listing.get("items", []))

    async def list_kuberay_deployments(self) -> list[dict[str, Any]] | None:
        """Return KubeRay operator Deployments cluster-wide, or None when kuberl may not list them."""
        path = "/apis/apps/v1/deployments"
        query = [("labelSelector", "app.kubernetes.io/name=kuberay-operator")]
        try:
            listing = await with_retries(lambda: self._call(path, "GET", query=query))
        except ApiError as exc:
            if exc.status in (401, 403, 404):
                return None
            raise
        return list(listing.get("items", []))

    async def post_event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                         now: datetime) -> None:
        """Record a core/v1 Event on ``obj``; failures are logged, never raised (events are advisory).

        The time goes in ``eventTime`` (microseconds) rather than the second-granular ``lastTimestamp``, so
        ``kubectl describe`` lists several events of the same second in the order they happened.
        """
        meta = obj["metadata"]
        stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", API_VERSION), "kind": obj.get("kind"),
                "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "reportingInstance": REPORTING_INSTANCE,
            "action": "Reconcile",
            "eventTime": stamp,
        }
        path = object_path("v1", "Event", meta["namespace"])
        try:
            await with_retries(lambda: self._call(path, "POST", body=event,
                                                  content_type="application/json"))
        except (ApiError, TransientApiError) as exc:
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)

    async def patch_job_status(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch the job's status subresource (only the keys in ``patch`` change)."""
        path = object_path(API_VERSION, "RLTrainingJob", namespace, name) + "/status"
        return await with_retries(
            lambda: self._call(path, "PATCH", body=patch,
                               content_type="application/merge-patch+json")
        )
