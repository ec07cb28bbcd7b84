"""Checkpoints are atomic: only complete ones are listed, pruning keeps the newest, RNG round-trips."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from kuberl.errors import CheckpointError
from kuberl.worker import checkpoint as ckpt


def save(root: Path, rollout_id: int, keep_last: int | None = None) -> ckpt.Checkpoint:
    return ckpt.save_checkpoint(
        root, rollout_id, {"rollout_id": rollout_id, "buffer": [[{"x": 1}]]},
        lambda d: (d / "weights.bin").write_bytes(b"w" * 10), keep_last=keep_last,
    )


def test_latest_complete_checkpoint_wins_and_partial_ones_are_ignored(tmp_path: Path) -> None:
    save(tmp_path, 1)
    save(tmp_path, 3)
    (tmp_path / ".tmp-rollout_000005").mkdir()  # a crash mid-write
    (tmp_path / "rollout_000007").mkdir()  # renamed dir without driver state cannot exist, but ignore it
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest is not None and latest.rollout_id == 3
    assert latest.driver_state()["buffer"] == [[{"x": 1}]]
    assert (latest.trainer_dir / "weights.bin").read_bytes() == b"w" * 10


def test_keep_last_prunes_older_checkpoints(tmp_path: Path) -> None:
    for i in range(5):
        save(tmp_path, i, keep_last=2)
    assert [c.rollout_id for c in ckpt.list_checkpoints(tmp_path)] == [3, 4]


def test_failed_trainer_save_leaves_no_checkpoint(tmp_path: Path) -> None:
    def broken(directory: Path) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match=r"spec\.checkpoint\.save"):
        ckpt.save_checkpoint(tmp_path, 2, {"rollout_id": 2}, broken)
    assert ckpt.latest_checkpoint(tmp_path) is None


def test_corrupt_driver_state_names_the_directory(tmp_path: Path) -> None:
    saved = save(tmp_path, 4)
    (saved.path / ckpt.DRIVER_STATE).write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="rollout_000004"):
        saved.driver_state()


def test_rng_state_round_trip_reproduces_draws() -> None:
    state = ckpt.rng_state()
    first = (random.random(), torch.rand(3).tolist())
    ckpt.restore_rng_state(state)
    assert (random.random(), torch.rand(3).tolist()) == first
