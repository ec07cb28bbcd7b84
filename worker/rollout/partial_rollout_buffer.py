"""The partial-rollout buffer: prompt groups carried over to a later rollout instead of thrown away.

Two kinds of groups land here: groups aborted mid-generation (partial responses, continued next rollout by
resending prompt + partial tokens) and groups that completed after the rollout's target was reached
(slime drops those; we keep them). The buffer is plain data and goes into every checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kuberl.worker.rollout.filters import pop_first
from kuberl.worker.rollout.sample import Sample

BufferFilter = Callable[[Any, int, list[list[Sample]], int], list[list[Sample]]]


class PartialRolloutBuffer:
    """FIFO of prompt groups; ``take`` delegates the choice to the user's buffer filter."""

    def __init__(self, buffer_filter: BufferFilter | None = None) -> None:
        self.groups: list[list[Sample]] = []
        self.buffer_filter: BufferFilter = buffer_filter or pop_first

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def num_samples(self) -> int:
        return sum(len(g) for g in self.groups)

    def put(self, group: list[Sample]) -> None:
        self.groups.append(group)

    def take(self, num_groups: int, rollout_id: int, args: Any = None) -> list[list[Sample]]:
        """Remove and return up to ``num_groups`` groups chosen by the buffer filter."""
        if num_groups <= 0 or not self.groups:
            return []
        taken = self.buffer_filter(args, rollout_id, self.groups, num_groups)
        return list(taken)[:num_groups]

    def state_dict(self) -> list[list[dict[str, Any]]]:
        return [[s.to_dict() for s in g] for g in self.groups]

    def load_state_dict(self, state: list[list[dict[str, Any]]]) -> None:
        self.groups = [[Sample.from_dict(d) for d in g] for g in state]
