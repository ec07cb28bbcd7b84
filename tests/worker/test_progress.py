"""The driver's status patch: what `kubectl get rltj` shows after each rollout."""

from __future__ import annotations

from datetime import UTC, datetime

from kuberl.worker.progress import ProgressReport, StatusReporter, progress_patch


def test_progress_patch_fills_printer_column_fields() -> None:
    patch = progress_patch(
        ProgressReport(rollout_id=11, num_rollout=3000, reward=0.61234567, eval_score=0.4,
                       checkpoint="/data/ckpt/rollout_000011", weight_version=12),
        datetime(2026, 11, 28, 9, 0, tzinfo=UTC),
    )
    assert patch == {"status": {
        "rollout": "12/3000",
        "progress": {"rolloutId": 11, "numRollout": 3000, "lastReward": 0.612346,
                     "lastEvalScore": 0.4, "lastCheckpoint": "/data/ckpt/rollout_000011",
                     "weightVersion": 12, "updatedAt": "2026-11-28T09:00:00Z"},
    }}


def test_unset_values_are_not_patched() -> None:
    patch = progress_patch(ProgressReport(rollout_id=0, num_rollout=None), datetime.now(UTC))
    assert set(patch["status"]["progress"]) == {"rolloutId", "numRollout", "updatedAt"}
    assert patch["status"]["rollout"] == "1/?"


def test_reporter_outside_a_cluster_is_a_no_op() -> None:
    reporter = StatusReporter(None)
    assert reporter.report(ProgressReport(rollout_id=0, num_rollout=1)) is False
