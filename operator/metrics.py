"""Prometheus metrics of the operator: reconciles and their latency by result, errors, jobs by phase.

kopf has no metrics of its own, so handlers record here and ``serve`` exposes ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from kuberl.api.status import Phase

RECONCILES = Counter(
    "kuberl_operator_reconciles", "Reconciles of RLTrainingJobs, by result.", ["result"]
)
RECONCILE_SECONDS = Histogram(
    "kuberl_operator_reconcile_duration_seconds", "Time to reconcile one RLTrainingJob, by result.",
    ["result"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
ERRORS = Counter(
    "kuberl_operator_errors", "Errors while reconciling, by kind (api, transient, spec, internal).",
    ["kind"],
)
ERROR_KINDS = ("api", "transient", "spec", "internal")
for _kind in ERROR_KINDS:  # export zeros from the start, so rate() and alerts see the series
    ERRORS.labels(_kind)
JOBS = Gauge("kuberl_operator_jobs", "RLTrainingJobs seen by this operator, by phase.", ["phase"])

# Results a reconcile ends with (label values of RECONCILES / RECONCILE_SECONDS).
OK, RETRY, INVALID, ERROR = "ok", "retry", "invalid", "error"


class Outcome:
    """Set ``result`` inside ``timed_reconcile`` when it is not ``ok``."""

    def __init__(self) -> None:
        self.result = OK


@contextmanager
def timed_reconcile() -> Iterator[Outcome]:
    """Count and time one reconcile; an escaping exception counts as ``error`` unless marked."""
    outcome = Outcome()
    start = time.perf_counter()
    try:
        yield outcome
    except BaseException:
        if outcome.result == OK:  # not a failure the handler recognised: a bug or an unexpected answer
            outcome.result = ERROR
            ERRORS.labels("internal").inc()
        raise
    finally:
        RECONCILES.labels(outcome.result).inc()
        RECONCILE_SECONDS.labels(outcome.result).observe(time.perf_counter() - start)


class PhaseTracker:
    """Remembers each job's phase so the JOBS gauge counts jobs, not transitions."""

    def __init__(self) -> None:
        self._phases: dict[tuple[str, str], str] = {}
        for phase in Phase:
            JOBS.labels(phase.value).set(0)
        JOBS.labels("Unknown").set(0)

    def set(self, namespace: str, name: str, phase: str | None) -> None:
        key, value = (namespace, name), phase or "Unknown"
        old = self._phases.get(key)
        if old == value:
            return
        if old is not None:
            JOBS.labels(old).dec()
        self._phases[key] = value
        JOBS.labels(value).inc()

    def drop(self, namespace: str, name: str) -> None:
        old = self._phases.pop((namespace, name), None)
        if old is not None:
            JOBS.labels(old).dec()


def serve(port: int, addr: str = "0.0.0.0") -> None:
    """Expose /metrics on ``addr:port`` from a background thread (port 0 disables it)."""
    if port:
        start_http_server(port, addr=addr)
