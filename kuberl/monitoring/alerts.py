"""Prometheus alert rules for kuberl jobs and the operator, as one rule file (Prometheus ``groups:`` format).

The same document is the ``spec`` of the chart's PrometheusRule and the input of ``promtool check rules`` and
``promtool test rules``. Thresholds live in ``Thresholds`` so a platform can regenerate with its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from kuberl.monitoring import series
from kuberl.monitoring.series import worker

RUNBOOK = "docs/monitoring.md#{anchor}"  # in the kuberl repository


@dataclass(frozen=True)
class Thresholds:
    no_progress_minutes: int = 30  # a step longer than this is a hang (reference steps take 2-4 min)
    reward_window: str = "1h"  # the peak reward is taken over this window
    reward_collapse_fraction: float = 0.5  # fire when the reward falls below this share of the peak
    reward_min_peak: float = 0.2  # ... and the peak was at least this (no alert before learning starts)
    throughput_window: str = "1h"
    throughput_drop_fraction: float = 0.5  # tokens/s per GPU below this share of the window's median
    logprob_diff_max: float = 0.1  # mean |train - rollout| logprob per token
    reconcile_error_rate: float = 0.0  # errors per second averaged over 10 minutes
    failed_window: str = "15m"


def _alert(name: str, expr: str, for_: str, severity: str, summary: str, description: str) -> dict:
    rule: dict = {"alert": name, "expr": expr}
    if for_ != "0m":
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook": RUNBOOK.format(anchor=name.lower()),
    }
    return rule


def rule_groups(t: Thresholds = Thresholds()) -> dict:
    """Return the rule file: one group for training jobs (driver metrics), one for the operator."""
    rollout_id, num_rollout = worker("progress/rollout_id"), worker("progress/num_rollout")
    reward = worker("rollout/reward_mean")
    tps = worker("perf/rollout_tokens_per_s_per_gpu")
    logprob_diff = worker("train/logprob_diff")
    job_rules = [
        _alert(
            "KuberlJobNoProgress",
            # "offset" keeps a job that started less than the window ago from firing early.
            f"changes({rollout_id}[{t.no_progress_minutes}m]) == 0"
            f" and {rollout_id} offset {t.no_progress_minutes}m"
            f" and ({rollout_id} + 1) < {num_rollout}",
            "5m", "warning",
            "RLTrainingJob {{ $labels.rltj }} has not finished a rollout in "
            f"{t.no_progress_minutes} minutes",
            "The last completed rollout id has not changed. Check the driver log, the rollout engines and the "
            "trainer pods.",
        ),
        _alert(
            "KuberlRewardCollapse",
            f"{reward} < {t.reward_collapse_fraction} * max_over_time({reward}[{t.reward_window}])"
            f" and max_over_time({reward}[{t.reward_window}]) > {t.reward_min_peak}",
            "10m", "warning",
            "Reward of {{ $labels.rltj }} collapsed below "
            f"{t.reward_collapse_fraction:.0%} of its {t.reward_window} peak",
            "Mean rollout reward is {{ $value | printf \"%.3f\" }}. Look at KL, entropy, the logprob diff and "
            "truncation on the RL training dashboard.",
        ),
        _alert(
            "KuberlRolloutThroughputDrop",
            f"{tps} < {t.throughput_drop_fraction}"
            f" * quantile_over_time(0.5, {tps}[{t.throughput_window}])",
            "15m", "warning",
            "Rollout throughput of {{ $labels.rltj }} fell below "
            f"{t.throughput_drop_fraction:.0%} of its {t.throughput_window} median",
            "Generated tokens/s per GPU is {{ $value | printf \"%.0f\" }}. Check engine health, response "
            "length and the partial-rollout buffer.",
        ),
        _alert(
            "KuberlLogprobDiffHigh",
            f"{logprob_diff} > {t.logprob_diff_max}",
            "10m", "critical",
            "Train/rollout logprob mismatch of {{ $labels.rltj }} is above " f"{t.logprob_diff_max}",
            "Mean |train - rollout| logprob per token is {{ $value | printf \"%.3f\" }}: the engines and the "
            "trainer disagree (weight sync, precision or kernel mismatch); updates are off-policy.",
        ),
    ]
    operator_rules = [
        _alert(
            "KuberlJobFailed",
            f'delta({series.OPERATOR_JOBS_BY_PHASE}{{phase="Failed"}}[{t.failed_window}]) > 0',
            "0m", "warning",
            "An RLTrainingJob failed (seen by the operator in namespace {{ $labels.namespace }})",
            "The number of RLTrainingJobs in phase Failed rose in the last "
            f"{t.failed_window}. `kubectl get rltj -A` and the job's status.reason/message say why.",
        ),
        _alert(
            "KuberlOperatorReconcileErrors",
            f"sum by (namespace) (rate({series.OPERATOR_ERRORS_TOTAL}[10m])) > {t.reconcile_error_rate}",
            "10m", "warning",
            "The kuberl operator keeps failing to reconcile",
            "{{ $value | printf \"%.3f\" }} reconcile errors per second over 10 minutes; read the operator log "
            "and the RLTrainingJobs' events.",
        ),
    ]
    return {"groups": [
        {"name": "kuberl-jobs", "rules": job_rules},
        {"name": "kuberl-operator", "rules": operator_rules},
    ]}


def render(t: Thresholds = Thresholds()) -> str:
    """Return the committed rule file's text."""
    header = "# Generated by `python -m kuberl.monitoring`; do not edit by hand.\n"
    return header + yaml.safe_dump(rule_groups(t), sort_keys=False, width=120)


def expressions(groups: dict) -> list[tuple[str, str]]:
    """Return (alert name, expr) for every rule of a rule file."""
    return [(r["alert"], r["expr"]) for g in groups["groups"] for r in g["rules"]]
