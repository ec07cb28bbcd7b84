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


BUFFERED_GROUPS_PER_ROLLOUT = 4


def partial_groups_first(args: Any, rollout_id: int, buffer: list[list[Any]], num_groups: int
                         ) -> list[list[Any]]:
    """A buffer filter that takes at most 4 groups, those with an unfinished (aborted) sample first.

    Rollout 0 leaves many finished late groups in the buffer; taken whole they would meet rollout 1's target
    before its fresh groups generate a token, leaving nothing to resume (a race the test used to lose under
    some loads). With 4 taken, rollout 1 must finish fresh groups, which decode in lock step with the rest,
    so its abort always leaves partial responses, and rollout 2 takes those first."""
    partial = [g for g in buffer if not all(s.status.is_finished for s in g)]
    finished = [g for g in buffer if all(s.status.is_finished for s in g)]
    taken = (partial + finished)[:min(num_groups, BUFFERED_GROUPS_PER_ROLLOUT)]
    chosen = {id(g) for g in taken}
    buffer[:] = [g for g in buffer if id(g) not in chosen]
    return taken
