"""A real Prometheus scrapes a short real training run (``kuberl train`` on the tiny CPU example, live metrics
endpoint); every dashboard query over the series the driver reported returns data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuberl.monitoring import dashboards, series, snapshot
from kuberl.monitoring.prometheus import LocalPrometheus
from kuberl.worker.metrics import METRICS, Kind

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "examples" / "tiny"
ROLLOUTS = 3

pytestmark = [pytest.mark.slow, pytest.mark.tool("prometheus")]

# Exported series name -> the driver's step-metric key.
KEY_OF = {series.worker(m.key): m.key for m in METRICS}


# Counters this run cannot move by construction (test_prometheus.py exports and checks every series).
NOT_IN_THIS_RUN = {
    "buffer/tokens_wasted": "partialRollout keeps aborted tokens; only a run without it throws them away",
    "rollout/late_groups_dropped": "partialRollout buffers late groups; only a run without it drops them",
    "rollout/over_context_samples": "the tiny prompts all have one length: a maxContextLen cutting one cuts all",
}


def _job_file(tmp: Path) -> Path:
    """The tiny example with its own checkpoint dir, a few rollouts and an evaluation every rollout, and
    every mechanism with a metric switched on: a KL loss (reference model), over-sampling with a filter
    that drops groups, and partial rollout. Rollout 0's groups run in lock step to maxResponseLen, so those
    past the target finish late (buffered); rollout 1 takes only 4 of them (the buffer filter), so it must
    finish fresh groups and aborts the rest mid-response; rollout 2 takes those partial groups first."""
    if not (TINY / "build" / "model").exists():
        subprocess.run([sys.executable, str(TINY / "prepare.py")], check=True, cwd=REPO, timeout=300)
    return snapshot.isolated_job(
        TINY / "job.yaml", tmp, checkpoint={"saveInterval": 1}, eval={"interval": 1},
        rollout={"numRollout": ROLLOUTS, "batchSize": 16, "overSamplingBatchSize": 48, "maxResponseLen": 64,
                 "partialRollout": True,
                 "dynamicSamplingFilterPath": "tests.monitoring.run_hooks:drop_every_third_group",
                 "bufferFilterPath": "tests.monitoring.run_hooks:partial_groups_first"},
        algorithm={"useKlLoss": True, "klLossCoef": 0.01},
    )


def _reported(rows: list[dict]) -> set[str]:
    """Keys the driver reported with data Prometheus can show: any value for gauges, a positive increment for
    counters (the exporter creates a counter's series at its first increment)."""
    counters = {m.key for m in METRICS if m.kind == Kind.COUNTER}
    return {k for row in rows for k, v in row.items()
            if isinstance(v, int | float) and (k not in counters or v > 0)}


@pytest.fixture(scope="module")
def live_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPrometheus, str, set[str], float]]:
    """(Prometheus, job name, reported keys, time of the last scrape with data)."""
    tmp = tmp_path_factory.mktemp("live-run")
    prom, job, start, end = snapshot.train_live(_job_file(tmp), ROLLOUTS, tmp / "run", timeout_s=900,
                                                cwd=REPO)
    rows = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    try:
        # The driver has exited, so its series are stale at `end`: query at its last successful scrape.
        [ids] = prom.query_range(f'kuberl_rollout_id{{rltj="{job}"}}', start, end, 1)
        yield prom, job, _reported(rows), float(ids["values"][-1][0])
    finally:
        prom.stop()


def test_every_panel_over_reported_metrics_returns_data(live_run) -> None:
    prom, job, reported, at = live_run
    checked, failures = 0, []
    for name, build in dashboards.DASHBOARDS.items():
        if name != "kuberl-rl-training.json":
            continue
        for title, expr in dashboards.panel_queries(dashboards.to_grafana(build())):
            used = {KEY_OF.get(n, n) for n in re.findall(r"kuberl_\w+", expr)}
            keys = {k for k in used if "/" in k}
            if not keys <= reported:
                continue  # covered by test_driver_reports_every_metric_of_its_table
            checked += 1
            if not prom.query(dashboards.substitute(expr, {"rltj": job}, "1m"), at=at):
                failures.append(f"{title}: {expr}")
    assert checked >= 20
    assert not failures, failures


def test_exported_reward_is_the_logged_one(live_run) -> None:
    prom, job, _, at = live_run
    [sample] = prom.query(f'kuberl_rollout_reward_mean{{rltj="{job}"}}', at=at)
    assert 0.0 <= float(sample["value"][1]) <= 1.0
    [rollout] = prom.query(f'kuberl_rollout_id{{rltj="{job}"}}', at=at)
    assert float(rollout["value"][1]) == ROLLOUTS - 1


def test_driver_reports_every_metric_of_its_table(live_run) -> None:
    """Every series of the table carries data from this one run, except the counters it cannot move."""
    _, _, reported, _ = live_run
    missing = {m.key for m in METRICS} - reported
    assert missing == set(NOT_IN_THIS_RUN), sorted(missing ^ set(NOT_IN_THIS_RUN))
