"""Hooks the live training run of test_training_scrape.py names by import path (the run's working
directory is the repository root, so ``tests.monitoring.run_hooks`` imports there)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kuberl.worker.rollout.filters import FilterResult


def drop_every_third_group(args: Any, samples: Sequence[Any], **kwargs: Any) -> FilterResult:
    """A dynamic-sampling filter that drops a fixed third of the groups, whatever the rewards, so the
    drop counters and over-sampling waves are exercised on every rollout."""
    if samples[0].group_index % 3 == 0:
        return FilterResult(False, "every_third")
    return FilterResult(True)
