"""Hooks the live training run of test_training_scrape.py names by import path (the run's working
directory is the repository root, so ``tests.monitoring.run_hooks`` imports there)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from kuberl.worker.rollout.filters import FilterResult


def drop_every_third_group(args: Any, samples: Sequence[Any], **kwargs: Any) -> FilterResult:
    """A dynamic-sampling filter that drops a fixed third of the groups, whatever the rewards, so the
    drop counters and over-sampling waves are exercised on every rollout.

    It takes 0.1 s a group, as a filter that asks a reward model would: with cheap graders inline, rollout 1
    could otherwise reach its target from the buffered groups before its fresh groups have generated a
    token, and there would be no partial response to resume in rollout 2."""
    time.sleep(0.1)
    if samples[0].group_index % 3 == 0:
        return FilterResult(False, "every_third")
    return FilterResult(True)
