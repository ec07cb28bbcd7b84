"""Exported series names, looked up from the tables that define them (never typed twice).

Worker names come from ``kuberl.worker.metrics.METRICS`` (counters gain ``_total`` on export); operator names
from ``kuberl.operator.metrics``. Both modules import only prometheus_client, so no torch is loaded here.
"""

from __future__ import annotations

from kuberl.worker.metrics import BY_KEY, JOB_LABEL, Kind

# Label selectors every job-level query carries; Grafana fills the variables, tests substitute them.
JOB_SELECTOR = f'{JOB_LABEL}=~"$rltj", namespace=~"$namespace"'


def worker(key: str) -> str:
    """Return the exported series name of a driver step metric, e.g. ``rollout/samples`` ->
    ``kuberl_rollout_samples_total``."""
    spec = BY_KEY[key]
    return spec.name + "_total" if spec.kind == Kind.COUNTER else spec.name


def job(key: str) -> str:
    """Return a job-scoped selector for one driver metric: ``name{rltj=~"$rltj", namespace=~"$namespace"}``."""
    return f"{worker(key)}{{{JOB_SELECTOR}}}"


STEP_HISTOGRAM = "kuberl_step_duration_seconds"  # MetricsExporter's histogram of time/step_s

# Operator series (kuberl.operator.metrics). PENDING: replace with imports once that module lands.
OPERATOR_JOBS_BY_PHASE = "kuberl_operator_jobs"
OPERATOR_RECONCILE_TOTAL = "kuberl_operator_reconciles_total"
OPERATOR_RECONCILE_SECONDS = "kuberl_operator_reconcile_duration_seconds"
OPERATOR_ERRORS_TOTAL = "kuberl_operator_reconcile_errors_total"
