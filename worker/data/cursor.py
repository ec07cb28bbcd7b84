"""Where the run is in the prompt stream: epoch, offset and the seeded order of each epoch.

Pure state with a tiny ``state_dict``, so checkpoints resume exactly where they stopped. Each epoch's
order is a permutation seeded by ``seed + epoch``; no random state has to be saved.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class PromptCursor:
    """Hands out dataset indices batch by batch, wrapping into the next (reshuffled) epoch."""

    size: int
    shuffle: bool = False
    seed: int = 42
    max_epochs: int | None = None
    epoch: int = 0
    offset: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0:
            raise ValueError(f"a cursor needs a non-empty dataset, size={self.size}")

    def order(self, epoch: int) -> list[int]:
        """The index order of ``epoch``."""
        idx = list(range(self.size))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(idx)
        return idx

    @property
    def exhausted(self) -> bool:
        return self.max_epochs is not None and self.epoch >= self.max_epochs

    def take(self, n: int) -> list[int]:
        """The next ``n`` indices (fewer only when ``max_epochs`` runs out)."""
        out: list[int] = []
        while len(out) < n and not self.exhausted:
            order = self.order(self.epoch)
            step = min(n - len(out), self.size - self.offset)
            out += order[self.offset : self.offset + step]
            self.offset += step
            if self.offset == self.size:
                self.epoch, self.offset = self.epoch + 1, 0
        return out

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["size"] != self.size:
            raise ValueError(f"cursor was saved for {state['size']} prompts, dataset has {self.size}; "
                             "resume with the same promptData and maxPromptLen")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
