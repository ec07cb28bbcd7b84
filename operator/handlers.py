"""The kopf shell: gather the job and its RayJob, call the pure core, apply the result, record status.

One idempotent ``reconcile`` serves create, resume and update (apply every child with server-side apply),
a periodic resync (re-read each RayJob; recreate it if someone deleted it) and RayJob watch events (fold
the RayJob's state into the job's status at once). Children are owned through ownerReferences, so deleting a
job needs no handler and no finalizer: the garbage collector removes them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from kuberl.api.admission import Severity, admission_problems
from kuberl.api.job import GROUP, PLURAL, VERSION, RLTrainingJob, parse_job
from kuberl.api.status import RLTrainingJobStatus
from kuberl.errors import SpecError
from kuberl.operator import labels, metrics, names
from kuberl.operator.apply import ApiError, Kube, TransientApiError
from kuberl.operator.kueue import (
    JOB_UID_LABEL,
    WORKLOAD_GROUP,
    WORKLOAD_VERSIONS,
    QueueRef,
    queue_of,
    workload_activation,
    workload_for,
)
from kuberl.operator.metrics import PhaseTracker
from kuberl.operator.render import RAYJOB_API_VERSION, creation_copy, render_children
from kuberl.operator.settings import OperatorConfig, configure_kopf
from kuberl.operator.status import (
    KUBERAY_GRACE_SECONDS,
    WAITING_PHASES,
    RayJobView,
    diagnose_pods,
    fold_status,
    invalid_spec_status,
    kuberay_watched_namespaces,
    phase_event,
    status_patch,
)

log = logging.getLogger(__name__)

TRANSIENT_DELAY = 5  # seconds before kopf retries after the apiserver kept failing
API_ERROR_DELAY = 30  # e.g. the RayJob CRD is missing or rejects the object: slow retry, loud event


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a kopf Body that make up an RLTrainingJob, as plain dicts."""
    return {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec", "status") if k in body}


def _previous_status(body: Mapping[str, Any]) -> RLTrainingJobStatus | None:
    raw = body.get("status")
    if not raw:
        return None
    try:
        return RLTrainingJobStatus.model_validate(dict(raw))
    except ValueError:
        return None


async def _write_status(
    kube: Kube, body: Mapping[str, Any], previous: RLTrainingJobStatus | None,
    new: RLTrainingJobStatus,
) -> None:
    """Patch the operator-owned status fields that changed; post an Event when the phase changed."""
    meta = body["metadata"]
    patch = status_patch(previous, new)
    if patch:
        await kube.patch_job_status(meta["namespace"], meta["name"], patch)
    event = phase_event(previous.phase if previous else None, new,
                        previous.reason if previous else None)
    if event is not None:
        await kube.post_event(body, event.type, event.reason, event.message, datetime.now(UTC))


async def reconcile(
    body: Mapping[str, Any], memo: Any, *, rayjob: dict[str, Any] | None = None, apply: bool = True
) -> None:
    """Converge one job: apply its children (``apply``) or re-read them, then fold and write status.

    With ``apply=False`` children are only re-applied when the RayJob is missing (deleted by someone
    else) and the job is not finished; ``rayjob`` passes a RayJob already in hand (from a watch event).
    """
    meta = body["metadata"]
    if meta.get("deletionTimestamp"):
        return
    # One reconcile per job at a time, from the status as stored now: the create handler, RayJob and pod
    # events and the resync loop would otherwise race, each folding from a stale status and posting
    # Events with the wrong "from" phase. The spec is the one the caller was handed.
    key = (meta["namespace"], meta["name"])
    lock = memo.setdefault("job_locks", {}).setdefault(key, asyncio.Lock())
    async with memo.inflight, lock:  # inflight bounds load when hundreds of jobs arrive at once
        stored = await memo.kube.get_job(*key)
        if stored is None or stored["metadata"].get("deletionTimestamp"):
            memo.job_locks.pop(key, None)
            return
        current = {**_plain(body), "status": stored.get("status")}
        if not stored.get("status"):
            current.pop("status")
        await _reconcile(current, memo, rayjob=rayjob, apply=apply)


async def _workload(kube: Kube, queue: QueueRef | None, rayjob: dict[str, Any] | None
                    ) -> dict[str, Any] | None:
    """The Kueue Workload of a queued job's RayJob (None: not queued, no RayJob, or none yet)."""
    uid = ((rayjob or {}).get("metadata") or {}).get("uid")
    if queue is None or not uid:
        return None
    namespace = rayjob["metadata"]["namespace"] if rayjob else ""
    workloads = await kube.list_workloads(namespace, f"{JOB_UID_LABEL}={uid}")
    return workload_for(workloads or [], rayjob)


async def _apply_child(kube: Kube, child: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply one child; a queued RayJob is first created suspended (creation_copy)."""
    if child.get("kind") == "RayJob":
        first = creation_copy(child)
        if first is not child:
            await kube.create(first)
    return await kube.apply(child)


async def _diagnosis_inputs(
    kube: Kube, job: RLTrainingJob, rayjob: dict[str, Any] | None, now: datetime,
    workload: dict[str, Any] | None = None, queue: QueueRef | None = None,
) -> tuple[list[dict[str, Any]], list[str] | None]:
    """Read what explains a waiting job: its pods, and (after the grace period without any RayJob
    status) which namespaces KubeRay watches. Nothing is read for a job that is not waiting."""
    if rayjob is None:
        return [], None
    if fold_status(job, rayjob, now, workload=workload, queue=queue).phase not in WAITING_PHASES:
        return [], None
    meta = job.metadata
    assert meta.namespace is not None
    pods = await kube.list_pods(meta.namespace, f"{labels.JOB_NAME}={meta.name}")
    view = RayJobView.of(rayjob)
    watched = None
    if (not view.deployment and view.created_at is not None
            and (now - view.created_at).total_seconds() >= KUBERAY_GRACE_SECONDS):
        watched = kuberay_watched_namespaces(await kube.list_kuberay_deployments() or [])
    return pods, watched


async def _reconcile(
    body: Mapping[str, Any], memo: Any, *, rayjob: dict[str, Any] | None, apply: bool
) -> None:
    kube: Kube = memo.kube
    config: OperatorConfig = memo.config
    meta = body["metadata"]
    now = datetime.now(UTC)
    with metrics.timed_reconcile() as outcome:
        try:
            job: RLTrainingJob = parse_job(_plain(body))
            warnings = _admit(job, config)
        except SpecError as exc:
            outcome.result = metrics.INVALID
            metrics.ERRORS.labels("spec").inc()
            previous = _previous_status(body)
            failed = invalid_spec_status(previous, str(exc), now, meta.get("generation"))
            await _write_status(kube, body, previous, failed)
            await kube.post_event(body, "Warning", "InvalidSpec", str(exc), now)
            raise kopf.PermanentError(f"invalid spec: {exc}") from None
        previous = job.status
        if previous is not None and previous.phase is not None and previous.phase.is_terminal:
            return  # finished jobs keep their status and are never restarted
        if warnings and (previous is None or previous.phase is None):  # once, at first admission
            await kube.post_event(body, "Warning", "SpecWarning", "; ".join(warnings), now)
        try:
            if not apply and rayjob is None:
                rayjob = await kube.get(
                    RAYJOB_API_VERSION, "RayJob", meta["namespace"], names.rayjob_name(meta["name"])
                )
                if rayjob is None:
                    apply = True
                    if previous is not None and previous.ray_job_name:  # it existed: someone deleted it
                        await kube.post_event(body, "Normal", "RecreatingRayJob",
                                              "the RayJob is missing; recreating it", now)
            if apply:
                children = render_children(job, config.render_settings())
                for stage in children.apply_stages():
                    stored = await asyncio.gather(*(_apply_child(kube, c) for c in stage))
                    rayjob = next((o for o in stored if o.get("kind") == "RayJob"), rayjob)
            queue = _queue(job, config)
            workload = await _workload(kube, queue, rayjob)
            activation = workload_activation(queue, workload, suspend=job.spec.suspend)
            if workload is not None and activation is not None:
                await kube.patch_workload(workload, activation)
                await kube.post_event(body, "Normal", "WorkloadDeactivated" if job.spec.suspend
                                      else "WorkloadActivated",
                                      f"Kueue Workload {workload['metadata']['name']}: spec.active="
                                      f"{activation['spec']['active']} (spec.suspend="
                                      f"{job.spec.suspend})", now)
            pods, watched = await _diagnosis_inputs(kube, job, rayjob, now, workload, queue)
            await _write_status(kube, body, previous,
                                fold_status(job, rayjob, now, pods, kuberay_namespaces=watched,
                                            workload=workload, queue=queue))
        except TransientApiError as exc:
            outcome.result = metrics.RETRY
            metrics.ERRORS.labels("transient").inc()
            raise kopf.TemporaryError(f"apiserver unavailable: {exc}", delay=TRANSIENT_DELAY) from None
        except ApiError as exc:
            outcome.result = metrics.ERROR
            metrics.ERRORS.labels("api").inc()
            await kube.post_event(body, "Warning", "ReconcileFailed", str(exc), now)
            raise kopf.TemporaryError(f"apiserver refused: {exc}", delay=API_ERROR_DELAY) from None


def _admit(job: RLTrainingJob, config: OperatorConfig) -> list[str]:
    """Refuse a job that cannot run in a cluster before its RayJob exists; return its warnings.

    A job whose RayJob was already created was admitted before (its spec is immutable), so an operator
    upgrade with a stricter table never fails a running job.

    Raises:
        SpecError: one ``field: message`` line per admission error.
    """
    settings = config.render_settings()
    queue_of(job, settings.default_queue_name, settings.default_priority_class)  # spec vs label
    problems = admission_problems(job, gpus_per_node=settings.gpus_per_node)
    admitted_before = job.status is not None and job.status.ray_job_name is not None
    errors = [str(p) for p in problems if p.severity is Severity.ERROR]
    if errors and not admitted_before:
        raise SpecError(errors)
    return [str(p) for p in problems if p.severity is Severity.WARNING]


def _queue(job: RLTrainingJob, config: OperatorConfig) -> QueueRef | None:
    """The job's Kueue queue, with the operator's defaults (a conflict was refused at admission)."""
    settings = config.render_settings()
    try:
        return queue_of(job, settings.default_queue_name, settings.default_priority_class)
    except SpecError:
        return None


# --- handlers (attached to a registry by `register`) -----------------------------------------------


def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """kopf's own API credentials: the pod's service account in a cluster, else $KUBECONFIG."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        return kopf.login_with_service_account(**kwargs)
    return kopf.login_with_kubeconfig(**kwargs)


async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    configure_kopf(settings)
    config = memo.get("config") or OperatorConfig.from_env()
    memo.config = config
    memo.kube = await Kube.connect(config.kubeconfig)
    memo.phases = PhaseTracker()
    memo.inflight = asyncio.Semaphore(config.max_concurrent_reconciles)
    memo.job_locks = {}
    memo.troubled_jobs = set()
    metrics.serve(config.metrics_port, config.metrics_addr)
    memo.resync_task = asyncio.create_task(resync_loop(memo), name="kuberl-resync")


async def cleanup(memo: Any, **_: Any) -> None:
    task = memo.get("resync_task")
    if task is not None:
        task.cancel()
    kube = memo.get("kube")
    if kube is not None:
        await kube.close()


async def ensure(body: kopf.Body, memo: Any, **_: Any) -> None:
    """Create, resume and update: apply every child, then fold status."""
    await reconcile(body, memo)


async def resync_loop(memo: Any) -> None:
    """Every ``resync_seconds``: re-read each job's RayJob, recreate it if it vanished, fold status.

    Level-triggered safety net behind the watches. An operator-wide loop rather than a kopf timer: kopf
    guards timers with a finalizer on every job, which would block deleting jobs while no operator runs.
    """
    config: OperatorConfig = memo.config
    while True:
        await asyncio.sleep(config.resync_seconds)
        try:
            jobs = await memo.kube.list_jobs(config.namespaces)
        except (ApiError, TransientApiError) as exc:
            log.warning("resync: cannot list jobs: %s", exc)
            continue
        for job in jobs:
            try:
                await reconcile(job, memo, apply=False)
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.info("resync of %s: %s", job["metadata"]["name"], exc)
            except Exception:  # one broken job must not stop the loop for the others
                log.exception("resync of %s failed", job["metadata"]["name"])


async def rayjob_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A RayJob we own changed or vanished: fold it into its job's status at once."""
    meta = body["metadata"]
    job_name = (meta.get("labels") or {}).get(labels.JOB_NAME)
    if not job_name:
        return
    if type != "DELETED" and not body.get("status"):
        return  # KubeRay has not reported yet: nothing to fold (the creating reconcile wrote status)
    job = await memo.kube.get_job(meta["namespace"], job_name)
    if job is None:
        return
    if type == "DELETED":
        await reconcile(job, memo, apply=False)
    else:
        await reconcile(job, memo, rayjob=dict(body), apply=False)


async def workload_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Kueue changed the Workload of one of our RayJobs (admitted, pending with a new reason, evicted):
    fold it into the job's status at once instead of at the next resync."""
    meta = body["metadata"]
    owner = next((o for o in meta.get("ownerReferences") or []
                  if o.get("kind") == "RayJob" and o.get("apiVersion", "").startswith("ray.io/")), None)
    if owner is None:
        return
    rayjob = await memo.kube.get(RAYJOB_API_VERSION, "RayJob", meta["namespace"], owner["name"])
    job_name = (((rayjob or {}).get("metadata") or {}).get("labels") or {}).get(labels.JOB_NAME)
    if rayjob is None or not job_name or (rayjob["metadata"].get("labels") or {}).get(
            labels.MANAGED_BY) != labels.MANAGER:
        return
    job = await memo.kube.get_job(meta["namespace"], job_name)
    if job is not None:
        await reconcile(job, memo, rayjob=rayjob, apply=False)


async def pod_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A pod of a job changed: a pod that cannot start (or recovers) updates the job's status at once.

    Healthy pods of healthy jobs are ignored, so the steady stream of pod updates costs no API calls.
    """
    meta = body["metadata"]
    job_name = (meta.get("labels") or {}).get(labels.JOB_NAME)
    if not job_name:
        return
    key = (meta["namespace"], job_name)
    troubled: set[tuple[str, str]] = memo.troubled_jobs
    if diagnose_pods([dict(body)]) is not None:
        troubled.add(key)
    elif key in troubled:
        troubled.discard(key)  # re-fold: the problem may be gone
    else:
        return
    job = await memo.kube.get_job(*key)
    if job is not None:
        await reconcile(job, memo, apply=False)


def job_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Track every job's phase for the jobs-by-phase gauge."""
    meta = body["metadata"]
    phases: PhaseTracker = memo.phases
    if type == "DELETED":
        phases.drop(meta["namespace"], meta["name"])
    else:
        phases.set(meta["namespace"], meta["name"], (body.get("status") or {}).get("phase"))


def register(registry: kopf.OperatorRegistry) -> kopf.OperatorRegistry:
    """Attach kuberl's handlers to ``registry`` (none needs a finalizer on the job)."""
    job = (GROUP, VERSION, PLURAL)
    kopf.on.login(registry=registry)(login)
    kopf.on.startup(registry=registry)(startup)
    kopf.on.cleanup(registry=registry)(cleanup)
    kopf.on.resume(*job, registry=registry)(ensure)
    kopf.on.create(*job, registry=registry)(ensure)
    kopf.on.update(*job, registry=registry)(ensure)
    kopf.on.event(*job, registry=registry)(job_event)
    kopf.on.event(
        "", "v1", "pods", labels={labels.JOB_NAME: kopf.PRESENT, labels.MANAGED_BY: labels.MANAGER},
        registry=registry,
    )(pod_event)
    kopf.on.event(
        "ray.io", "v1", "rayjobs", labels={labels.MANAGED_BY: labels.MANAGER}, registry=registry
    )(rayjob_event)
    # Kueue's Workloads (absent without Kueue: kopf then only warns that it cannot serve them).
    kopf.on.event(WORKLOAD_GROUP, WORKLOAD_VERSIONS[0], "workloads", registry=registry)(workload_event)
    return registry
