"""bench/real_engine_grpo.py: its pure checks, and a short CPU run of the real driver (embedded engine)."""

from __future__ import annotations

import pytest

from kuberl.worker.rollout.sample import Sample, SampleStatus
from tests.bench.scripts import load_script


def load_bench():
    return load_script("real_engine_grpo")


def _sample(index: int, tokens: int, status: SampleStatus) -> Sample:
    return Sample(index=index, group_index=0, prompt_ids=[1, 2], response_ids=[3] * tokens,
                  status=status)


def test_partial_samples_counts_only_unfinished_non_empty_responses():
    bench = load_bench()
    groups = [[_sample(0, 5, SampleStatus.PENDING), _sample(1, 0, SampleStatus.PENDING)],
              [_sample(2, 7, SampleStatus.COMPLETED), _sample(3, 2, SampleStatus.ABORTED)]]
    assert bench.partial_samples(groups) == 2


def _row(rollout_id: int, expected: str, engines: list[str], diff: float) -> dict:
    return {"rollout_id": rollout_id, "expected_version": expected, "engine_versions": engines,
            "partial_in_buffer": rollout_id, "metrics": {"train/logprob_diff": diff,
                                                         "perf/rollout_tokens_per_s": 10.0}}


def test_summary_flags_an_engine_that_missed_a_sync():
    bench = load_bench()
    good = [_row(0, "1", ["1"], 0.01), _row(1, "2", ["2"], 0.03)]
    s = bench.summarize(good)
    assert s["weights_synced_every_rollout"] and s["max_partial_in_buffer"] == 1
    assert s["logprob_diff_max"] == pytest.approx(0.03)
    assert not bench.summarize([*good, _row(2, "3", ["2"], 0.01)])["weights_synced_every_rollout"]
    assert not bench.summarize([])["weights_synced_every_rollout"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_rollouts_on_cpu_sync_every_engine_and_report(tmp_path, capsys):
    bench = load_bench()
    out = bench.main(["--rollouts", "3", "--workdir", str(tmp_path / "work"),
                      "--out-dir", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    s = out["summary"]
    assert s["rollouts"] == 3 and s["weights_synced_every_rollout"], out["rows"]
    assert [r["expected_version"] for r in out["rows"]] == ["1", "2", "3"]
    # Same weights, fp32 on both sides: the trainer reproduces the embedded engine's logprobs.
    assert s["logprob_diff_max"] is not None and s["logprob_diff_max"] < 1e-3
    assert s["rollout_tokens_per_s_mean"] > 0
    assert "| rollout | reward |" in printed and "weights synced every rollout" in printed
    assert (tmp_path / "out" / "real_engine_grpo.json").is_file()
