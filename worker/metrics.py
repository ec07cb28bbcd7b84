"""The driver's Prometheus metrics: one table maps each namespaced step metric to its exported series.

The table is the single source for the exporter, the Grafana dashboards and the alert rules. Actors return
plain metric dicts; only the driver exports, so there is one scrape target per job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

JOB_LABEL = "rltj"  # not "job": Prometheus reserves that for the scrape job


class Kind(StrEnum):
    GAUGE = "gauge"  # last value of a per-step metric
    COUNTER = "counter"  # the step metric is an increment


@dataclass(frozen=True)
class MetricSpec:
    key: str  # namespaced step-metric key, e.g. "rollout/reward_mean"
    name: str  # Prometheus series name (counters get a _total suffix when exported)
    help: str
    kind: Kind = Kind.GAUGE


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("progress/rollout_id", "kuberl_rollout_id", "Last completed rollout id."),
    MetricSpec("progress/num_rollout", "kuberl_num_rollout", "Rollouts planned."),
    MetricSpec("progress/weight_version", "kuberl_weight_version", "Weight version engines serve."),
    MetricSpec("rollout/reward_mean", "kuberl_rollout_reward_mean", "Mean raw reward of the rollout."),
    MetricSpec("rollout/response_len_mean", "kuberl_rollout_response_length_mean",
               "Mean response length in tokens."),
    MetricSpec("rollout/truncated_ratio", "kuberl_rollout_truncated_ratio",
               "Share of responses cut at maxResponseLen."),
    MetricSpec("rollout/zero_std_ratio", "kuberl_rollout_zero_std_group_ratio",
               "Share of prompt groups whose rewards are all equal (no learning signal)."),
    MetricSpec("rollout/generated_tokens", "kuberl_rollout_generated_tokens",
               "Response tokens generated.", Kind.COUNTER),
    MetricSpec("rollout/samples", "kuberl_rollout_samples", "Samples trained on.", Kind.COUNTER),
    MetricSpec("perf/rollout_tokens_per_s", "kuberl_rollout_tokens_per_second",
               "Generated tokens per second during the rollout."),
    MetricSpec("perf/rollout_tokens_per_s_per_gpu", "kuberl_rollout_tokens_per_second_per_gpu",
               "Generated tokens per second per rollout GPU (per engine on CPU)."),
    MetricSpec("time/rollout_s", "kuberl_step_rollout_seconds", "Rollout wall time of the step."),
    MetricSpec("time/reward_s", "kuberl_step_reward_seconds", "Reward grading wall time."),
    MetricSpec("time/logprob_s", "kuberl_step_logprob_seconds", "Old/ref logprob passes."),
    MetricSpec("time/train_s", "kuberl_step_train_seconds", "Training wall time of the step."),
    MetricSpec("time/weight_sync_s", "kuberl_step_weight_sync_seconds", "Weight sync wall time."),
    MetricSpec("time/eval_s", "kuberl_step_eval_seconds", "Evaluation wall time."),
    MetricSpec("time/checkpoint_s", "kuberl_step_checkpoint_seconds", "Checkpoint wall time."),
    MetricSpec("time/step_s", "kuberl_step_seconds", "Whole step wall time."),
    MetricSpec("train/loss", "kuberl_train_loss", "Total training loss."),
    MetricSpec("train/pg_loss", "kuberl_train_pg_loss", "Policy-gradient loss."),
    MetricSpec("train/clip_fraction", "kuberl_train_clip_fraction", "Share of tokens clipped."),
    MetricSpec("train/kl", "kuberl_train_kl", "KL to the reference model."),
    MetricSpec("train/entropy", "kuberl_train_entropy", "Mean token entropy."),
    MetricSpec("train/grad_norm", "kuberl_train_grad_norm", "Gradient norm before clipping."),
    MetricSpec("train/logprob_diff", "kuberl_train_rollout_logprob_abs_diff",
               "Mean |train - rollout| logprob per token (engine/trainer mismatch)."),
    MetricSpec("train/lr", "kuberl_train_learning_rate", "Learning rate."),
    MetricSpec("eval/score", "kuberl_eval_score", "Mean score of the last evaluation."),
    MetricSpec("dynamic_sampling/groups_dropped", "kuberl_dynamic_sampling_groups_dropped",
               "Groups dropped by the dynamic-sampling filter.", Kind.COUNTER),
    MetricSpec("dynamic_sampling/waves", "kuberl_dynamic_sampling_waves",
               "Over-sampling waves started.", Kind.COUNTER),
    MetricSpec("buffer/samples", "kuberl_buffer_samples", "Samples waiting in the partial-rollout buffer."),
    MetricSpec("buffer/partial_resumed", "kuberl_partial_samples_resumed",
               "Partial samples continued from the buffer.", Kind.COUNTER),
    MetricSpec("buffer/tokens_reused", "kuberl_partial_tokens_reused",
               "Tokens kept by resuming partial samples.", Kind.COUNTER),
    MetricSpec("buffer/tokens_wasted", "kuberl_aborted_tokens_wasted",
               "Generated tokens thrown away by aborts.", Kind.COUNTER),
    MetricSpec("buffer/late_groups_buffered", "kuberl_late_groups_buffered",
               "Groups finished after the rollout's target, kept for the next (partialRollout).",
               Kind.COUNTER),
    MetricSpec("rollout/late_groups_dropped", "kuberl_rollout_late_groups_dropped",
               "Groups finished after the rollout's target and dropped (no partialRollout).",
               Kind.COUNTER),
    MetricSpec("rollout/offpolicy_token_fraction", "kuberl_rollout_offpolicy_token_fraction",
               "Share of trained response tokens generated by older weights (masked or TIS-weighted)."),
    MetricSpec("rollout/over_context_samples", "kuberl_rollout_over_context_samples",
               "Samples whose prompt left no room under maxContextLen (trained empty, as slime).",
               Kind.COUNTER),
)
BY_KEY = {m.key: m for m in METRICS}


class MetricsExporter:
    """Holds the driver's series; ``observe(step_metrics)`` updates them after each rollout."""

    def __init__(self, job: str, registry: CollectorRegistry | None = None) -> None:
        self.job = job
        self.registry = registry or CollectorRegistry()
        self._series: dict[str, Gauge | Counter] = {}
        for spec in METRICS:
            cls = Counter if spec.kind == Kind.COUNTER else Gauge
            self._series[spec.key] = cls(spec.name, spec.help, [JOB_LABEL], registry=self.registry)
            if cls is Counter:
                self._series[spec.key].labels(job)  # exported as 0 from the start, not "no data"
        self._step_hist = Histogram(
            "kuberl_step_duration_seconds", "Step wall time distribution.", [JOB_LABEL],
            buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200), registry=self.registry,
        )

    def observe(self, metrics: Mapping[str, float]) -> None:
        """Export every known key of one step's metrics; unknown keys are ignored (kept in the log)."""
        for key, value in metrics.items():
            series = self._series.get(key)
            if series is None or value is None:
                continue
            if isinstance(series, Counter):
                if value > 0:
                    series.labels(self.job).inc(value)
            else:
                series.labels(self.job).set(value)
        if "time/step_s" in metrics:
            self._step_hist.labels(self.job).observe(metrics["time/step_s"])

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the /metrics HTTP endpoint in a daemon thread; port 0 picks a free port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return server.server_port
