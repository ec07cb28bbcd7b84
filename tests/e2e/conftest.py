"""Fixtures for end-to-end runs of `kuberl train` on the tiny example (real model, Ray, engines)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_prepare():
    spec = importlib.util.spec_from_file_location("tiny_prepare", ROOT / "examples/tiny/prepare.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def easy_tiny_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny example with a 4-letter alphabet (chance 1/4): learns in a few dozen rollouts."""
    return load_prepare().prepare(tmp_path_factory.mktemp("tiny-easy"), seed=0, num_letters=4)


def tiny_job(build: Path, run_root: Path, **spec_overrides: Any) -> Path:
    """Write a copy of examples/tiny/job.yaml pointing at ``build``; nested overrides merge."""
    job = yaml.safe_load((ROOT / "examples/tiny/job.yaml").read_text())
    spec = job["spec"]
    spec["model"]["hfCheckpoint"] = str(build / "model")
    spec["rollout"]["promptData"] = str(build / "train.jsonl")
    spec["eval"]["datasets"] = [{"name": "held-out", "path": str(build / "eval.jsonl")}]
    spec["checkpoint"]["save"] = str(run_root / "checkpoints")
    for group, values in spec_overrides.items():
        if isinstance(values, dict):
            spec.setdefault(group, {}).update(values)
        else:
            spec[group] = values
    path = run_root / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def kuberl_cmd(*args: str) -> list[str]:
    """The installed console script (not ``python -m`` from the repository root, where the top-level
    ``operator/`` folder would shadow the standard library for a bare interpreter)."""
    return [str(Path(sys.executable).parent / "kuberl"), *args]
