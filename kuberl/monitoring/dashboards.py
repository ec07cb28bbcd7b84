"""Grafana dashboards as code: the per-job "RL training" dashboard and the operator dashboard.

Panels are small frozen values (title, queries, unit); ``to_grafana`` lays them out on Grafana's 24-column grid
and emits the dashboard JSON model (schemaVersion 39, Grafana 10/11). Plain dicts keep the generator free of
extra dependencies; the structure tests and a real Prometheus check what the SDK's lenient parser would not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from kuberl.monitoring import series
from kuberl.monitoring.series import job

GRID_COLUMNS = 24
SCHEMA_VERSION = 39
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Query:
    expr: str  # PromQL; may use $rltj, $namespace and $__rate_interval
    legend: str


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # or "stat"
    width: int = 8
    height: int = 7
    stacked: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Variable:
    name: str
    label: str
    query: str  # label_values(...) for Prometheus; "prometheus" for the datasource variable
    kind: str = "query"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[Variable, ...] = field(default_factory=tuple)
    tags: tuple[str, ...] = ("kuberl",)


DATASOURCE_VARIABLE = Variable("datasource", "Data source", "prometheus", kind="datasource")


def _q(expr: str, legend: str = "{{rltj}}") -> Query:
    return Query(expr, legend)


def _rate(key: str) -> str:
    return f"rate({job(key)}[$__rate_interval])"


def rl_training() -> Dashboard:
    """Return the per-job dashboard: learning signal, rollout health, throughput, step time, policy drift."""
    step_parts = (
        ("time/rollout_s", "rollout"),
        ("time/reward_s", "reward"),
        ("time/logprob_s", "logprob"),
        ("time/train_s", "train"),
        ("time/weight_sync_s", "weight sync"),
        ("time/eval_s", "eval"),
        ("time/checkpoint_s", "checkpoint"),
    )
    progress = Row("Progress", (
        Panel("Rollout", "Last completed rollout id (0-based) and the planned number of rollouts.",
              (_q(job("progress/rollout_id"), "{{rltj}} done"),
               _q(job("progress/num_rollout"), "{{rltj}} planned")), kind="stat"),
        Panel("Weight version", "Weight version the rollout engines serve; it rises by one per sync.",
              (_q(job("progress/weight_version")),), kind="stat"),
        Panel("Samples trained / s", "Samples trained on per second.",
              (_q(_rate("rollout/samples")),), unit="ops"),
    ))
    learning = Row("Learning signal", (
        Panel("Reward (rollout mean)", "Mean raw reward of each rollout's samples.",
              (_q(job("rollout/reward_mean")),)),
        Panel("Eval score", "Mean score of the last evaluation (every evalInterval rollouts).",
              (_q(job("eval/score")),)),
        Panel("Response length", "Mean response length in tokens.",
              (_q(job("rollout/response_len_mean")),)),
        Panel("Truncated responses", "Share of responses cut at maxResponseLen; a rise starves the reward.",
              (_q(job("rollout/truncated_ratio")),), unit="percentunit"),
        Panel("Zero-std groups", "Share of prompt groups whose rewards are all equal (no GRPO signal).",
              (_q(job("rollout/zero_std_ratio")),), unit="percentunit"),
        Panel("Dynamic sampling", "Groups dropped by the filter and extra sampling waves, per second.",
              (_q(_rate("dynamic_sampling/groups_dropped"), "{{rltj}} dropped"),
               _q(_rate("dynamic_sampling/waves"), "{{rltj}} waves")), unit="ops"),
    ))
    rollout = Row("Rollout and buffer", (
        Panel("Tokens / s per GPU", "Generated tokens per second per rollout GPU during the rollout.",
              (_q(job("perf/rollout_tokens_per_s_per_gpu")),), unit="short"),
        Panel("Tokens / s", "Generated tokens per second: during the rollout, and averaged over wall time.",
              (_q(job("perf/rollout_tokens_per_s"), "{{rltj}} in rollout"),
               _q(_rate("rollout/generated_tokens"), "{{rltj}} wall-clock")), unit="short"),
        Panel("Partial-rollout buffer", "Samples waiting in the buffer for the next rollout.",
              (_q(job("buffer/samples")),)),
        Panel("Partial tokens", "Tokens kept by resuming partial samples vs thrown away by aborts, per second.",
              (_q(_rate("buffer/tokens_reused"), "{{rltj}} reused"),
               _q(_rate("buffer/tokens_wasted"), "{{rltj}} wasted"),
               _q(_rate("buffer/partial_resumed"), "{{rltj}} samples resumed")), unit="short"),
        Panel("Stale data", "Share of trained tokens from older weights (masked or TIS-weighted), and groups "
              "that finished after the target: buffered (partialRollout) or dropped, per second.",
              (_q(job("rollout/offpolicy_token_fraction"), "{{rltj}} off-policy fraction"),
               _q(_rate("buffer/late_groups_buffered"), "{{rltj}} late buffered"),
               _q(_rate("rollout/late_groups_dropped"), "{{rltj}} late dropped"),
               _q(_rate("rollout/over_context_samples"), "{{rltj}} over context")), unit="short"),
    ))
    timing = Row("Step time", (
        Panel("Step time breakdown", "Wall time of each stage of the last step, stacked.",
              tuple(_q(job(key), f"{{{{rltj}}}} {name}") for key, name in step_parts),
              unit="s", width=16, height=8, stacked=True),
        Panel("Step time p50 / p90", "Quantiles of the whole step's wall time over the last 30 minutes.",
              (_q(f"histogram_quantile(0.5, sum by (rltj, le) (rate({series.STEP_HISTOGRAM}_bucket"
                  f"{{{series.JOB_SELECTOR}}}[30m])))", "{{rltj}} p50"),
               _q(f"histogram_quantile(0.9, sum by (rltj, le) (rate({series.STEP_HISTOGRAM}_bucket"
                  f"{{{series.JOB_SELECTOR}}}[30m])))", "{{rltj}} p90"),
               _q(job("time/step_s"), "{{rltj}} last")), unit="s", height=8),
    ))
    policy = Row("Policy", (
        Panel("KL to reference", "KL divergence between the policy and the reference model.",
              (_q(job("train/kl")),)),
        Panel("Entropy", "Mean token entropy of the policy.", (_q(job("train/entropy")),)),
        Panel("Clip fraction", "Share of tokens whose importance ratio was clipped.",
              (_q(job("train/clip_fraction")),), unit="percentunit"),
        Panel("Train / rollout logprob diff", "Mean |train - rollout| logprob per token; a rise means the "
              "engine and the trainer disagree (precision, weight-sync or kernel bug).",
              (_q(job("train/logprob_diff")),)),
        Panel("Loss", "Total and policy-gradient loss.",
              (_q(job("train/loss"), "{{rltj}} loss"), _q(job("train/pg_loss"), "{{rltj}} pg loss"))),
        Panel("Gradient norm and learning rate", "Gradient norm before clipping; learning rate.",
              (_q(job("train/grad_norm"), "{{rltj}} grad norm"),
               _q(job("train/lr"), "{{rltj}} lr"))),
    ))
    return Dashboard(
        uid="kuberl-rl-training",
        title="kuberl / RL training",
        description="One RLTrainingJob's GRPO loop, from the driver's metrics (label rltj = job name).",
        rows=(progress, learning, rollout, timing, policy),
        variables=(
            DATASOURCE_VARIABLE,
            Variable("namespace", "Namespace", f"label_values({series.worker('progress/rollout_id')}, namespace)"),
            Variable("rltj", "Job", f"label_values({series.worker('progress/rollout_id')}"
                                    '{namespace=~"$namespace"}, rltj)'),
        ),
        tags=("kuberl", "rl"),
    )


def operator() -> Dashboard:
    """Return the operator dashboard: jobs by phase, reconcile rate, latency and errors."""
    reconcile_rate = f"sum by (result) (rate({series.OPERATOR_RECONCILE_TOTAL}[$__rate_interval]))"
    latency = (
        f"histogram_quantile({{q}}, sum by (le) (rate({series.OPERATOR_RECONCILE_SECONDS}_bucket[$__rate_interval])))"
    )
    rows = (
        Row("Jobs", (
            Panel("Jobs by phase", "RLTrainingJobs the operator sees, by status.phase.",
                  (Query(f"sum by (phase) ({series.OPERATOR_JOBS_BY_PHASE})", "{{phase}}"),), width=12, stacked=True),
            Panel("Jobs by phase (now)", "Current count per phase.",
                  (Query(f"sum by (phase) ({series.OPERATOR_JOBS_BY_PHASE})", "{{phase}}"),), kind="stat", width=12),
        )),
        Row("Reconcile", (
            Panel("Reconciles / s", "Reconcile passes per second by result.",
                  (Query(reconcile_rate, "{{result}}"),), unit="ops"),
            Panel("Reconcile latency", "Reconcile duration quantiles.",
                  (Query(latency.format(q=0.5), "p50"), Query(latency.format(q=0.95), "p95")), unit="s"),
            Panel("Reconcile errors / s", "Reconcile errors per second by kind (api, transient, spec, internal).",
                  (Query(f"sum by (kind) (rate({series.OPERATOR_ERRORS_TOTAL}[$__rate_interval]))", "{{kind}}"),),
                  unit="ops"),
        )),
    )
    return Dashboard(
        uid="kuberl-operator",
        title="kuberl / operator",
        description="The kuberl operator: RLTrainingJobs by phase, reconcile rate, latency and errors.",
        rows=rows,
        variables=(DATASOURCE_VARIABLE,),
        tags=("kuberl", "operator"),
    )


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    custom: dict = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "auto"}
    if panel.stacked:
        custom |= {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 60}
    body: dict = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": q.expr, "legendFormat": q.legend}
            for i, q in enumerate(panel.queries)
        ],
    }
    if panel.kind == "timeseries":
        body["fieldConfig"]["defaults"]["custom"] = custom
        body["options"] = {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                           "tooltip": {"mode": "multi", "sort": "none"}}
    else:
        body["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                           "colorMode": "value", "graphMode": "area", "textMode": "auto"}
    return body


def _variable_json(v: Variable) -> dict:
    if v.kind == "datasource":
        return {"name": v.name, "label": v.label, "type": "datasource", "query": v.query,
                "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []}
    return {
        "name": v.name, "label": v.label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": v.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": v.query, "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
        "current": {}, "hide": 0, "sort": 1, "options": [], "regex": "",
    }


def to_grafana(d: Dashboard) -> dict:
    """Return Grafana's dashboard JSON model: rows of panels laid out left to right, wrapping at 24 columns."""
    panels: list[dict] = []
    next_id, y = 1, 0
    for row in d.rows:
        panels.append({"id": next_id, "type": "row", "title": row.title, "collapsed": False,
                       "gridPos": {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": y}, "panels": []})
        next_id, y = next_id + 1, y + 1
        x, line_height = 0, 0
        for panel in row.panels:
            if x + panel.width > GRID_COLUMNS:
                x, y, line_height = 0, y + line_height, 0
            panels.append(_panel_json(panel, next_id, x, y))
            next_id += 1
            x += panel.width
            line_height = max(line_height, panel.height)
        y += line_height
    return {
        "uid": d.uid,
        "title": d.title,
        "description": d.description,
        "tags": list(d.tags),
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {"list": [_variable_json(v) for v in d.variables]},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


# File name in charts/kuberl/dashboards/ -> builder.
DASHBOARDS = {
    "kuberl-rl-training.json": rl_training,
    "kuberl-operator.json": operator,
}


def render() -> dict[str, str]:
    """Return each dashboard file's text, exactly as committed (sorted keys, 2-space indent, final newline)."""
    return {name: json.dumps(to_grafana(build()), indent=2, sort_keys=True) + "\n"
            for name, build in DASHBOARDS.items()}


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    """Return (panel title, expr) for every query target of a dashboard JSON model."""
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


def substitute(expr: str, values: dict[str, str] | None = None, rate_interval: str = "1m") -> str:
    """Return ``expr`` with Grafana's variables filled as Grafana would: ``$__rate_interval`` by
    ``rate_interval`` and each ``$name`` by ``values[name]`` (default ``.*``, the "All" value)."""
    values = values or {}
    out = expr.replace("$__rate_interval", rate_interval)
    for name in ("namespace", "rltj"):
        out = out.replace(f"${name}", values.get(name, ".*"))
    return out
