"""The committed dashboards are what the generator writes, are well-formed Grafana JSON, and query real series."""

from __future__ import annotations

import json
import re

import promql_parser
import pytest

from kuberl.monitoring import dashboards, series
from kuberl.monitoring.__main__ import DASHBOARD_DIR
from kuberl.worker.metrics import METRICS

BUILT = {name: dashboards.to_grafana(build()) for name, build in dashboards.DASHBOARDS.items()}


@pytest.mark.parametrize("name", sorted(dashboards.DASHBOARDS))
def test_committed_dashboard_matches_generator(name: str) -> None:
    path = DASHBOARD_DIR / name
    assert path.exists(), f"{path} missing: run python -m kuberl.monitoring"
    assert path.read_text() == dashboards.render()[name], f"{path} drifted: run python -m kuberl.monitoring"


def test_dashboard_uids_are_unique_and_short() -> None:
    uids = [d["uid"] for d in BUILT.values()]
    assert len(set(uids)) == len(uids)
    assert all(len(uid) <= 40 for uid in uids)  # Grafana's uid limit


@pytest.mark.parametrize("name", sorted(BUILT))
def test_panels_fit_the_grid_without_overlap(name: str) -> None:
    cells: dict[tuple[int, int], str] = {}
    ids = [p["id"] for p in BUILT[name]["panels"]]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in BUILT[name]["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] >= 1 and pos["x"] + pos["w"] <= dashboards.GRID_COLUMNS, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("name", sorted(BUILT))
def test_datasources_are_the_variable_and_every_variable_is_used(name: str) -> None:
    board = BUILT[name]
    text = json.dumps(board["panels"])
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert panel["targets"], f"{panel['title']} has no query"
    variables = [v["name"] for v in board["templating"]["list"]]
    assert "datasource" in variables
    for var in variables:
        used_in_panels = f"${var}" in text or f"${{{var}}}" in text
        used_in_variables = any(f"${var}" in json.dumps(v.get("query", "")) for v in board["templating"]["list"])
        assert used_in_panels or used_in_variables, f"variable {var} is never used"


@pytest.mark.parametrize(("title", "expr"), [q for b in BUILT.values() for q in dashboards.panel_queries(b)])
def test_every_panel_query_parses(title: str, expr: str) -> None:
    promql_parser.parse(dashboards.substitute(expr))  # raises ValueError on bad PromQL


def test_a_bad_query_is_caught_by_the_parser() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse(dashboards.substitute('rate(kuberl_rollout_samples_total{rltj=~"$rltj"}[$__rate'))


def test_training_dashboard_shows_every_driver_metric() -> None:
    """A metric added to the driver's table must get a panel (or the table and the dashboard drift apart)."""
    text = json.dumps(BUILT["kuberl-rl-training.json"])
    missing = [m.key for m in METRICS if not re.search(rf"\b{series.worker(m.key)}\b", text)]
    assert not missing, f"driver metrics without a panel: {missing}"


def test_training_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = " | ".join(p["title"].lower() for p in BUILT["kuberl-rl-training.json"]["panels"])
    for wanted in ("reward", "eval", "response length", "truncated", "zero-std", "dynamic sampling", "buffer",
                   "tokens / s per gpu", "step time breakdown", "kl", "entropy", "clip fraction",
                   "logprob diff", "weight version"):
        assert wanted in titles, wanted


def test_step_breakdown_stacks_rollout_train_and_sync() -> None:
    panel = next(p for p in BUILT["kuberl-rl-training.json"]["panels"] if p["title"] == "Step time breakdown")
    exprs = " ".join(t["expr"] for t in panel["targets"])
    for key in ("time/rollout_s", "time/train_s", "time/weight_sync_s"):
        assert series.worker(key) in exprs
    assert panel["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"


def test_operator_dashboard_shows_phases_latency_and_errors() -> None:
    text = json.dumps(BUILT["kuberl-operator.json"])
    for name in (series.OPERATOR_JOBS_BY_PHASE, series.OPERATOR_RECONCILE_SECONDS,
                 series.OPERATOR_ERRORS_TOTAL, series.OPERATOR_RECONCILE_TOTAL):
        assert name in text


def test_substitute_fills_grafana_variables() -> None:
    expr = 'rate(x{rltj=~"$rltj", namespace=~"$namespace"}[$__rate_interval])'
    assert dashboards.substitute(expr, {"rltj": "glm4"}, "2m") == 'rate(x{rltj=~"glm4", namespace=~".*"}[2m])'
