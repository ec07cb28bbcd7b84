"""Dynamic-sampling group filters and partial-rollout buffer filters (slime-compatible signatures).

A dynamic-sampling filter is ``fn(args, samples, **kwargs)`` returning a bool or a ``FilterResult``
(keep + reason); a buffer filter is ``fn(args, rollout_id, buffer, num_samples)`` returning the groups to
continue and removing them from ``buffer``. Users name their own with an import path in the spec.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class FilterResult:
    """A filter's verdict on one prompt group; ``reason`` labels the drop metric."""

    keep: bool
    reason: str | None = None


def normalize_verdict(verdict: Any) -> FilterResult:
    """Accept slime's bool (or tensor bool) or a FilterResult-like object with keep/reason."""
    if isinstance(verdict, FilterResult):
        return verdict
    keep = getattr(verdict, "keep", None)
    if keep is not None:
        return FilterResult(bool(keep), getattr(verdict, "reason", None))
    return FilterResult(bool(verdict), None if bool(verdict) else "filtered")


def check_reward_nonzero_std(args: Any, samples: Sequence[Any], **kwargs: Any) -> FilterResult:
    """Keep a group only when its rewards are not all equal (DAPO): equal rewards give zero advantage."""
    rewards = [float(s.reward) for s in samples]
    if len(rewards) < 2 or statistics.pstdev(rewards) == 0.0:
        return FilterResult(False, "zero_std")
    return FilterResult(True)


def pop_first(args: Any, rollout_id: int, buffer: list[list[Any]], num_samples: int) -> list[list[Any]]:
    """Take the oldest ``num_samples`` groups from the buffer (slime's default buffer filter)."""
    taken = buffer[:num_samples]
    del buffer[:num_samples]
    return taken
