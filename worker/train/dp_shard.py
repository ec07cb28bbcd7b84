# pyright: strict
"""Data-parallel shares of one step: which samples each DP rank computes, by a pure, deterministic rule.

Every trainer rank receives the same full sample list and calls ``shard_for_rank`` with its own rank, so
the ranks agree on the split without communicating. Shares are token-balanced (greedy longest-first onto
the least-loaded rank), which bounds the slowest rank's extra work by one sample. The loss normaliser is
computed from the full list (``losses.LossNormalizer``), so how samples are split never changes the loss.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast, overload

T = TypeVar("T")


def shard_indices(lengths: Sequence[int], dp_size: int) -> list[list[int]]:
    """Return ``dp_size`` ascending lists of sample indices that cover every index exactly once.

    Samples are taken longest first (ties by index) and each goes to the rank with the fewest tokens so
    far (ties: fewer samples, then lower rank). The result depends only on ``lengths`` and ``dp_size``.

    Raises:
        ValueError: ``dp_size`` is not positive or a length is negative.
    """
    if dp_size <= 0:
        raise ValueError(f"data-parallel size must be positive, got {dp_size}")
    if any(n < 0 for n in lengths):
        raise ValueError(f"sample lengths must be non-negative, got {list(lengths)}")
    shares: list[list[int]] = [[] for _ in range(dp_size)]
    heap = [(0, 0, r) for r in range(dp_size)]  # (tokens, samples, rank): already a valid heap
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        tokens, count, rank = heapq.heappop(heap)
        shares[rank].append(i)
        heapq.heappush(heap, (tokens + lengths[i], count + 1, rank))
    return [sorted(share) for share in shares]


class Shard(Sequence[T]):
    """One rank's samples, in their original relative order, with their indices in the full list."""

    def __init__(self, items: Sequence[T], indices: Sequence[int]) -> None:
        self.indices: tuple[int, ...] = tuple(indices)
        self._items = [items[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> T: ...
    @overload
    def __getitem__(self, index: slice) -> list[T]: ...
    def __getitem__(self, index: int | slice) -> T | list[T]:
        return self._items[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __repr__(self) -> str:
        return f"Shard(indices={self.indices})"


def _num_tokens(sample: Any) -> int:
    return int(sample.num_tokens)


def shard_for_rank(
    samples: Sequence[T],
    dp_rank: int,
    dp_size: int,
    *,
    length: Callable[[T], int] = _num_tokens,
) -> Shard[T]:
    """Return the share of ``samples`` that data-parallel rank ``dp_rank`` of ``dp_size`` computes.

    ``length`` is a sample's cost in tokens (``TrainSample.num_tokens`` by default). A rank may get no
    sample when there are fewer samples than ranks; it must still join the step's collectives.

    Raises:
        ValueError: ``dp_rank`` is outside ``[0, dp_size)``.
    """
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"data-parallel rank {dp_rank} is outside [0, {dp_size})")
    return Shard(samples, shard_indices([length(s) for s in samples], dp_size)[dp_rank])


def unshard(parts: Sequence[tuple[Sequence[int], Sequence[T]]], num_items: int) -> list[T]:
    """Reassemble per-rank results ``(indices, values)`` into the original order of ``num_items`` items.

    Raises:
        ValueError: the parts do not cover every index exactly once, or a part's lengths disagree.
    """
    out: list[T | None] = [None] * num_items
    seen = [False] * num_items
    for indices, values in parts:
        if len(indices) != len(values):
            raise ValueError(f"a shard has {len(indices)} indices but {len(values)} values")
        for i, v in zip(indices, values, strict=True):
            if not 0 <= i < num_items or seen[i]:
                raise ValueError(f"shard index {i} is out of range or repeated (of {num_items})")
            seen[i] = True
            out[i] = v
    if not all(seen):
        missing = [i for i, s in enumerate(seen) if not s]
        raise ValueError(f"shards miss items {missing[:10]} of {num_items}")
    return cast(list[T], out)
