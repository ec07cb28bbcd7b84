"""Exported series names, looked up from the tables that define them (never typed twice).

Worker names come from ``kuberl.worker.metrics.METRICS`` (counters gain ``_total`` on export); operator names
from ``kuberl.operator.metrics``. Both modules import only prometheus_client, so no torch is loaded here.
"""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from kuberl.operator import metrics as operator_metrics
from kuberl.worker.metrics import BY_KEY, JOB_LABEL, Kind

# Label selectors every job-level query carries; Grafana fills the variables, tests substitute them.
JOB_SELECTOR = f'{JOB_LABEL}=~"$rltj", namespace=~"$namespace"'


def _name(collector: MetricWrapperBase) -> str:
    """Return a prometheus_client collector's family name (without the _total a counter exports)."""
    return collector.describe()[0].name


def worker(key: str) -> str:
    """Return the exported series name of a driver step metric, e.g. ``rollout/samples`` ->
    ``kuberl_rollout_samples_total``."""
    spec = BY_KEY[key]
    return spec.name + "_total" if spec.kind == Kind.COUNTER else spec.name


def job(key: str) -> str:
    """Return a job-scoped selector for one driver metric: ``name{rltj=~"$rltj", namespace=~"$namespace"}``."""
    return f"{worker(key)}{{{JOB_SELECTOR}}}"


STEP_HISTOGRAM = "kuberl_step_duration_seconds"  # MetricsExporter's histogram of time/step_s

# Operator series, read off kuberl.operator.metrics' collectors (counters gain _total on export).
OPERATOR_JOBS_BY_PHASE = _name(operator_metrics.JOBS)  # gauge, label phase
OPERATOR_RECONCILE_TOTAL = _name(operator_metrics.RECONCILES) + "_total"  # label result
OPERATOR_RECONCILE_SECONDS = _name(operator_metrics.RECONCILE_SECONDS)  # histogram, label result
OPERATOR_ERRORS_TOTAL = _name(operator_metrics.ERRORS) + "_total"  # label kind
