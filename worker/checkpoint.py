"""Crash-safe checkpoints: weights, optimizer, data cursor, partial-rollout buffer and RNG states together.

A checkpoint is written into ``<save>/.tmp-rollout_NNNNNN`` and renamed to ``rollout_NNNNNN`` only when
complete, so a run killed mid-write (even by SIGKILL) resumes from the previous complete checkpoint. The
driver state is pickled (it holds samples with token lists) next to a small JSON summary for humans.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kuberl.errors import CheckpointError

log = logging.getLogger(__name__)

_PREFIX = "rollout_"
_TMP_PREFIX = ".tmp-"
DRIVER_STATE = "driver_state.pkl"
SUMMARY = "summary.json"
TRAINER_DIR = "trainer"


def checkpoint_name(rollout_id: int) -> str:
    return f"{_PREFIX}{rollout_id:06d}"


def rng_state() -> dict[str, Any]:
    """Capture every RNG the driver uses, so a resumed run samples the same way."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    rollout_id: int

    @property
    def trainer_dir(self) -> Path:
        return self.path / TRAINER_DIR

    def driver_state(self) -> dict[str, Any]:
        try:
            with (self.path / DRIVER_STATE).open("rb") as f:
                return pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            raise CheckpointError(
                f"cannot read {self.path / DRIVER_STATE}: {exc}; delete {self.path} to resume from "
                "the previous checkpoint"
            ) from exc


def list_checkpoints(root: Path) -> list[Checkpoint]:
    """Return complete checkpoints under ``root``, oldest first (temporary ones are ignored)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        if child.is_dir() and child.name.startswith(_PREFIX) and (child / DRIVER_STATE).exists():
            try:
                found.append(Checkpoint(child, int(child.name.removeprefix(_PREFIX))))
            except ValueError:
                continue
    return sorted(found, key=lambda c: c.rollout_id)


def latest_checkpoint(root: Path | None) -> Checkpoint | None:
    if root is None:
        return None
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    root: Path,
    rollout_id: int,
    driver_state: dict[str, Any],
    save_trainer: Callable[[Path], None],
    keep_last: int | None = None,
) -> Checkpoint:
    """Write one complete checkpoint atomically and prune old ones; return it.

    Raises:
        CheckpointError: the directory cannot be written (the message names it).
    """
    final = root / checkpoint_name(rollout_id)
    tmp = root / f"{_TMP_PREFIX}{checkpoint_name(rollout_id)}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / TRAINER_DIR).mkdir(parents=True)
        save_trainer(tmp / TRAINER_DIR)
        with (tmp / DRIVER_STATE).open("wb") as f:
            pickle.dump(driver_state, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        summary = {k: v for k, v in driver_state.items() if isinstance(v, int | float | str)}
        (tmp / SUMMARY).write_text(json.dumps({"rollout_id": rollout_id, **summary}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {final}: {exc.strerror or exc}; check spec.checkpoint.save "
            "points at a writable volume with free space"
        ) from exc
    if keep_last:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old.path, ignore_errors=True)
    log.info("saved checkpoint %s", final)
    return Checkpoint(final, rollout_id)
