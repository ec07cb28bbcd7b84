"""The alert rules: committed file matches the generator, promtool accepts them, and each alert fires on the
series it is meant for (and stays quiet on the healthy twin) under ``promtool test rules``."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import promql_parser
import pytest
import yaml

from kuberl.monitoring import alerts, series
from kuberl.monitoring.__main__ import RULES_FILE

PROMTOOL = shutil.which("promtool") or "promtool"
needs_promtool = pytest.mark.tool("promtool")

RID, NUM = series.worker("progress/rollout_id"), series.worker("progress/num_rollout")
REWARD = series.worker("rollout/reward_mean")
TPS = series.worker("perf/rollout_tokens_per_s_per_gpu")
DIFF = series.worker("train/logprob_diff")
DEFAULTS = alerts.Thresholds()
SCRAPE = 'job="driver", instance="10.0.0.1:9400"'


@dataclass
class Case:
    """One promtool test: input series (1m apart), then which alerts fire at ``at`` with which labels."""

    alert: str
    at: str
    series: dict[str, str]
    firing: list[dict[str, str]] = field(default_factory=list)
    value: float | None = None  # the alert's $value, for annotations that print it


CASES = [
    # Stuck after rollout 5 (at 5m) of 100: quiet while the 30 m window still sees the change, firing 5 m after.
    Case("KuberlJobNoProgress", "30m", {f'{RID}{{rltj="stuck", {SCRAPE}}}': "0+1x5 5x60",
                                        f'{NUM}{{rltj="stuck", {SCRAPE}}}': "100x65"}),
    Case("KuberlJobNoProgress", "45m", {f'{RID}{{rltj="stuck", {SCRAPE}}}': "0+1x5 5x60",
                                        f'{NUM}{{rltj="stuck", {SCRAPE}}}': "100x65"},
         [{"rltj": "stuck"}], value=0),
    # Finished (last id 99 of 100) and young (first rollout seen 15 m ago) jobs never fire.
    Case("KuberlJobNoProgress", "60m", {f'{RID}{{rltj="done", {SCRAPE}}}': "95+1x4 99x60",
                                        f'{NUM}{{rltj="done", {SCRAPE}}}': "100x65"}),
    Case("KuberlJobNoProgress", "45m", {f'{RID}{{rltj="young", {SCRAPE}}}': "_x30 0x30",
                                        f'{NUM}{{rltj="young", {SCRAPE}}}': "_x30 100x30"}),
    # Reward climbs to 0.6 in an hour, then falls to 0.1: fires after 10 m; a job that never learned stays quiet.
    Case("KuberlRewardCollapse", "75m", {f'{REWARD}{{rltj="collapse", {SCRAPE}}}': "0+0.01x60 0.1x30"},
         [{"rltj": "collapse"}], value=0.1),
    Case("KuberlRewardCollapse", "65m", {f'{REWARD}{{rltj="collapse", {SCRAPE}}}': "0+0.01x60 0.1x30"}),
    Case("KuberlRewardCollapse", "75m", {f'{REWARD}{{rltj="flat", {SCRAPE}}}': "0.1x90"}),
    # Tokens/s per GPU falls from 3000 to 1000: fires after 15 m; normal jitter does not.
    Case("KuberlRolloutThroughputDrop", "80m", {f'{TPS}{{rltj="slow", {SCRAPE}}}': "3000x60 1000x30"},
         [{"rltj": "slow"}], value=1000),
    Case("KuberlRolloutThroughputDrop", "80m", {f'{TPS}{{rltj="ok", {SCRAPE}}}': "3000x30 2500x30 2800x30"}),
    # Train/rollout logprob mismatch 0.3 for 20 m fires; 0.02 is healthy.
    Case("KuberlLogprobDiffHigh", "40m", {f'{DIFF}{{rltj="mismatch", {SCRAPE}}}': "0.02x20 0.3x30"},
         [{"rltj": "mismatch"}], value=0.3),
    Case("KuberlLogprobDiffHigh", "40m", {f'{DIFF}{{rltj="fine", {SCRAPE}}}': "0.02x50"}),
    # One more Failed job at 10m: fires while the 15 m window sees the rise, then clears.
    Case("KuberlJobFailed", "12m", {f'{series.OPERATOR_JOBS_BY_PHASE}{{phase="Failed", namespace="kuberl-system", '
                                    'job="operator"}': "0x10 1x30"},
         [{"namespace": "kuberl-system", "phase": "Failed", "job": "operator"}]),
    Case("KuberlJobFailed", "35m", {f'{series.OPERATOR_JOBS_BY_PHASE}{{phase="Failed", namespace="kuberl-system", '
                                    'job="operator"}': "0x10 1x30"}),
    # One reconcile error a minute for 30 m fires after 10 m; no errors, no alert.
    Case("KuberlOperatorReconcileErrors", "25m",
         {f'{series.OPERATOR_ERRORS_TOTAL}{{kind="api", namespace="kuberl-system"}}': "0+1x30"},
         [{"namespace": "kuberl-system"}], value=1 / 60),
    Case("KuberlOperatorReconcileErrors", "25m",
         {f'{series.OPERATOR_ERRORS_TOTAL}{{kind="api", namespace="kuberl-system"}}': "0x30"}),
]


def _rule(name: str, t: alerts.Thresholds) -> dict:
    return next(r for g in alerts.rule_groups(t)["groups"] for r in g["rules"] if r["alert"] == name)


def _render(template: str, labels: dict[str, str], value: float | None) -> str:
    """Expand the two template forms our annotations use, as Prometheus would."""
    out = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), "<no value>"), template)
    return re.sub(r'\{\{ \$value \| printf "(%[^"]*)" \}\}', lambda m: m.group(1) % value, out)


def _promtool_tests(cases: list[Case], rule_file: Path, t: alerts.Thresholds = DEFAULTS) -> dict:
    tests = []
    for case in cases:
        rule = _rule(case.alert, t)
        expected = []
        for extra in case.firing:
            labels = {**extra, **rule["labels"]}
            scrape_labels = dict(re.findall(r'(\w+)="([^"]*)"', next(iter(case.series))))
            if "rltj" in extra:  # job alerts keep the series' scrape labels
                labels |= {k: v for k, v in scrape_labels.items() if k in ("job", "instance")}
            expected.append({
                "exp_labels": labels,
                "exp_annotations": {k: _render(v, labels, case.value) for k, v in rule["annotations"].items()},
            })
        tests.append({
            "interval": "1m",
            "input_series": [{"series": s, "values": v} for s, v in case.series.items()],
            "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": expected}],
        })
    return {"rule_files": [str(rule_file)], "evaluation_interval": "1m", "tests": tests}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def test_committed_rules_match_generator() -> None:
    assert RULES_FILE.read_text() == alerts.render(), f"{RULES_FILE} drifted: run python -m kuberl.monitoring"


def test_issue_alerts_exist() -> None:
    names = {name for name, _ in alerts.expressions(alerts.rule_groups())}
    assert names == {"KuberlJobFailed", "KuberlJobNoProgress", "KuberlRewardCollapse",
                     "KuberlRolloutThroughputDrop", "KuberlLogprobDiffHigh", "KuberlOperatorReconcileErrors"}


@pytest.mark.parametrize(("name", "expr"), alerts.expressions(alerts.rule_groups()))
def test_every_alert_expression_parses(name: str, expr: str) -> None:
    promql_parser.parse(expr)


def test_every_alert_has_a_test_that_fires_and_one_that_stays_quiet() -> None:
    for name, _ in alerts.expressions(alerts.rule_groups()):
        assert any(c.alert == name and c.firing for c in CASES), f"{name} never fires in a test"
        assert any(c.alert == name and not c.firing for c in CASES), f"{name} has no quiet case"


@needs_promtool
def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = _promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


@needs_promtool
def test_alerts_fire_on_their_series_under_promtool(tmp_path: Path) -> None:
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(yaml.safe_dump(_promtool_tests(CASES, RULES_FILE), sort_keys=False))
    result = _promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_catches_a_wrong_threshold(tmp_path: Path) -> None:
    """Proof the promtool tests can fail: with a 1.0 logprob threshold the mismatch case no longer fires."""
    wrong = alerts.Thresholds(logprob_diff_max=1.0)
    rules = tmp_path / "rules.yaml"
    rules.write_text(alerts.render(wrong))
    tests = tmp_path / "alerts_test.yaml"
    cases = [c for c in CASES if c.alert == "KuberlLogprobDiffHigh" and c.firing]
    tests.write_text(yaml.safe_dump(_promtool_tests(cases, rules, wrong)))
    result = _promtool("test", "rules", str(tests))
    assert result.returncode != 0
    assert "KuberlLogprobDiffHigh" in result.stdout + result.stderr
