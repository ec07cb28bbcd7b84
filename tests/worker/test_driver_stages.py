"""The driver's pure stages: rollout metrics, train-sample building and advantages."""

from __future__ import annotations

import dataclasses
import subprocess
from collections import Counter

import pytest

from kuberl.api import load_jobs
from kuberl.api.resolve import resolve
from kuberl.worker.driver import (
    QuietInterruptedTasks,
    _child_processes,
    _children_since,
    fill_advantages,
    rollout_metrics,
    to_train_samples,
)
from kuberl.worker.rollout.dynamic_sampling import RolloutResult
from kuberl.worker.rollout.generate import make_group
from kuberl.worker.rollout.sample import SampleStatus
from tests.api.cases import EXAMPLES


def graded_groups(rewards: list[list[float]], lengths: list[list[int]]):
    groups = []
    for g, (rs, ls) in enumerate(zip(rewards, lengths, strict=True)):
        group = make_group([1, 2, 3], len(rs), g, g * len(rs))
        for s, r, n in zip(group, rs, ls, strict=True):
            s.append_response(list(range(10, 10 + n)), [-0.5] * n, "3")
            s.reward, s.status = r, SampleStatus.COMPLETED
        groups.append(group)
    return groups


def test_rollout_metrics_summarize_rewards_lengths_and_sampling() -> None:
    groups = graded_groups([[1, 0], [1, 1]], [[4, 8], [8, 2]])
    result = RolloutResult(groups=groups, dropped=Counter(zero_std=3), waves=2, generated_tokens=22,
                           wall_s=2.0, tokens_wasted=5, tokens_reused=7, resumed_samples=1)
    m = rollout_metrics(result, max_response_len=8, num_engines=2)
    assert m["rollout/reward_mean"] == pytest.approx(0.75)
    assert m["rollout/response_len_mean"] == pytest.approx(5.5)
    assert m["rollout/truncated_ratio"] == pytest.approx(0.5)  # two of four hit 8 tokens
    assert m["rollout/zero_std_ratio"] == pytest.approx(0.5)  # group [1, 1]
    assert m["perf/rollout_tokens_per_s"] == pytest.approx(11.0)
    assert m["perf/rollout_tokens_per_s_per_gpu"] == pytest.approx(5.5)
    assert m["dynamic_sampling/groups_dropped"] == 3 and m["dynamic_sampling/waves"] == 2
    assert (m["buffer/tokens_wasted"], m["buffer/tokens_reused"]) == (5, 7)


def test_train_samples_carry_tokens_masks_and_grpo_advantages() -> None:
    config = resolve(load_jobs(EXAMPLES / "tiny" / "job.yaml")[0], in_cluster=False)
    config = dataclasses.replace(config, n_samples_per_prompt=2)
    groups = graded_groups([[1.0, 0.0], [0.5, 0.5]], [[3, 2], [1, 4]])
    samples = to_train_samples(groups)
    assert samples[0].tokens == [1, 2, 3, 10, 11, 12] and samples[0].prompt_len == 3
    assert samples[0].rollout_logprobs == [-0.5] * 3 and samples[0].loss_mask == [1, 1, 1]
    for s in samples:
        s.old_logprobs = s.rollout_logprobs
    fill_advantages(samples, [1.0, 0.0, 0.5, 0.5], config)
    # Group (1, 0): mean 0.5, unbiased std 0.7071 -> +-0.7071 on every token; equal rewards -> 0.
    assert samples[0].advantages == pytest.approx([0.70710678] * 3, rel=1e-4)
    assert samples[1].advantages == pytest.approx([-0.70710678] * 2, rel=1e-4)
    assert samples[2].advantages == [0.0] and samples[3].advantages == [0.0] * 4


def test_megatron_without_megatron_core_fails_before_anything_starts(tmp_path, monkeypatch) -> None:
    from kuberl.errors import SpecError
    from kuberl.worker.driver import Driver, DriverOptions
    from kuberl.worker.train import trainer_actor

    monkeypatch.setattr(trainer_actor, "_megatron_core_installed", lambda: False)
    job = load_jobs(EXAMPLES / "glm4-9b-dapo-math.yaml")[0]
    with pytest.raises(SpecError, match=r"spec\.backends\.trainer: .*pip install kuberl\[megatron\]"):
        Driver(job, DriverOptions(in_cluster=True, run_dir=tmp_path))


def test_cleanup_targets_only_processes_started_after_the_snapshot() -> None:
    """In-process runs (tests, benches) must never kill their caller's children, e.g. a control plane."""
    older = subprocess.Popen(["sleep", "60"])
    try:
        before = _child_processes()
        newer = subprocess.Popen(["sleep", "60"])
        try:
            assert [p.pid for p in _children_since(before)] == [newer.pid]
        finally:
            newer.kill()
            newer.wait()
    finally:
        older.kill()
        older.wait()


def test_a_signal_stored_in_an_asyncio_task_prints_no_traceback() -> None:
    """Ctrl-C landing inside a running task is kept in the task too; asyncio would print its traceback."""
    import logging
    import sys

    def record(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException:
            info = sys.exc_info()
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "Task exception was never retrieved",
                                 None, info)

    quiet = QuietInterruptedTasks()
    assert not quiet.filter(record(KeyboardInterrupt("SIGINT")))
    assert quiet.filter(record(RuntimeError("a real bug still shows")))
    assert quiet.filter(logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "no exception", None, None))
