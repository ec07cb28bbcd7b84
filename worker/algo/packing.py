# pyright: strict
"""Dynamic batch size: pack variable-length samples into micro-batches and spread them over DP ranks.

"Pack first, distribute second", as slime's ``dp_schedule`` does, with two changes: first-fit
*decreasing* instead of first-fit in sample order (fewer, fuller micro-batches), and an equal-count
Karmarkar-Karp partition of micro-batches over ranks when ``balance_data`` is on. Samples are never
truncated: one longer than the budget gets a micro-batch of its own. Every rank gets the same number of
micro-batches, so collectives and pipeline schedules line up. How samples are packed never changes the
loss (see ``losses.LossNormalizer``), so the packer is free to optimise for throughput alone.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count
from typing import cast

import torch
from torch import Tensor

MicroBatch = tuple[int, ...]  # sample indices into the step's sample list


def token_budget(max_tokens_per_gpu: int, cp_size: int = 1) -> int:
    """Return the tokens one micro-batch may hold: context-parallel ranks share cp x the per-GPU cap."""
    if max_tokens_per_gpu <= 0 or cp_size <= 0:
        raise ValueError(
            f"spec.perf.maxTokensPerGpu ({max_tokens_per_gpu}) and contextParallelSize ({cp_size}) "
            "must be positive"
        )
    return max_tokens_per_gpu * cp_size


def first_fit(order: Sequence[int], lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Place samples, in ``order``, into the first micro-batch with room; over-budget ones go alone."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


def pack_micro_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Return micro-batches (lists of sample indices) of at most ``budget`` tokens, first-fit decreasing.

    Samples are placed longest first into the first micro-batch with room; a sample over the budget
    opens a micro-batch alone. Deterministic: ties break by sample index; indices inside a micro-batch
    are ascending.
    """
    if budget <= 0:
        raise ValueError(f"token budget must be positive, got {budget}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [sorted(b) for b in first_fit(order, lengths, budget)]


def fixed_micro_batches(num_samples: int, micro_batch_size: int) -> list[list[int]]:
    """Return consecutive micro-batches of ``micro_batch_size`` samples (dynamic batching off)."""
    if micro_batch_size <= 0:
        raise ValueError(f"spec.rollout.microBatchSize must be positive, got {micro_batch_size}")
    return [
        list(range(s, min(s + micro_batch_size, num_samples)))
        for s in range(0, num_samples, micro_batch_size)
    ]


def split_in_two(members: Sequence[int], lengths: Sequence[int]) -> tuple[list[int], list[int]]:
    """Return two halves of a micro-batch with token counts as equal as greedy LPT makes them."""
    halves: tuple[list[int], list[int]] = ([], [])
    sums = [0, 0]
    for i in sorted(members, key=lambda i: (-lengths[i], i)):
        side = 0 if sums[0] <= sums[1] else 1
        halves[side].append(i)
        sums[side] += lengths[i]
    return sorted(halves[0]), sorted(halves[1])


def equal_count_partition(weights: Sequence[float], k: int) -> list[list[int]]:
    """Return k lists of item indices, each with len(weights)/k items, with balanced weight sums.

    Karmarkar-Karp largest differencing for k-way partitions under a cardinality constraint: items
    sorted by weight are cut into rows of k (one item per part); repeatedly the two partial solutions
    with the largest spread are merged, heaviest part of one with the lightest part of the other.
    """
    n = len(weights)
    if k <= 0 or n % k:
        raise ValueError(f"cannot split {n} items into {k} parts of equal count")
    if n == 0:
        return [[] for _ in range(k)]
    order = sorted(range(n), key=lambda i: (-weights[i], i))
    tie = count()
    heap: list[tuple[float, int, list[tuple[float, list[int]]]]] = []
    for row in range(0, n, k):
        parts = [(float(weights[i]), [i]) for i in order[row : row + k]]  # heaviest first
        heapq.heappush(heap, (-(parts[0][0] - parts[-1][0]), next(tie), parts))
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        merged = [(wa + wb, ia + ib) for (wa, ia), (wb, ib) in zip(a, reversed(b), strict=True)]
        merged.sort(key=lambda p: (-p[0], min(p[1])))
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), next(tie), merged))
    return [sorted(items) for _, items in heap[0][2]]


@dataclass(frozen=True)
class StepPlan:
    """Which samples each DP rank trains on, micro-batch by micro-batch, for one optimizer step."""

    ranks: tuple[tuple[MicroBatch, ...], ...]  # [dp rank][micro-batch] -> sample indices
    lengths: tuple[int, ...]  # tokens per sample (prompt + response)
    budget: int | None  # tokens per micro-batch; None for fixed micro-batch size

    @property
    def num_micro_batches(self) -> int:
        """Micro-batches per rank (the same on every rank)."""
        return len(self.ranks[0]) if self.ranks else 0

    def rank_tokens(self) -> list[int]:
        """Return the real (unpadded) tokens each rank processes."""
        return [sum(self.lengths[i] for mb in rank for i in mb) for rank in self.ranks]

    def efficiency(self) -> float:
        """Real tokens / (micro-batches on all ranks x budget): 1.0 means every slot is full."""
        slots = len(self.ranks) * self.num_micro_batches
        if not self.budget or slots == 0:
            return float("nan")
        return sum(self.lengths) / (slots * self.budget)

    def imbalance(self) -> float:
        """Max / mean tokens per rank: 1.0 means no rank waits for another."""
        tokens = self.rank_tokens()
        mean = sum(tokens) / len(tokens) if tokens else 0.0
        return max(tokens) / mean if mean else 1.0

    def metrics(self) -> dict[str, float]:
        """Namespaced packing diagnostics for the step's metric dict."""
        return {
            "perf/packing_efficiency": self.efficiency(),
            "perf/dp_imbalance": self.imbalance(),
            "perf/micro_batches_per_rank": float(self.num_micro_batches),
        }


def plan_step(
    lengths: Sequence[int],
    *,
    dp_size: int = 1,
    use_dynamic_batch_size: bool = True,
    max_tokens_per_gpu: int | None = None,
    cp_size: int = 1,
    micro_batch_size: int = 1,
    balance_data: bool = False,
) -> StepPlan:
    """Return the micro-batch schedule of one optimizer step over ``dp_size`` ranks.

    Dynamic: first-fit-decreasing packing under ``cp_size * max_tokens_per_gpu``; the count is raised to
    a multiple of ``dp_size`` by halving the fullest multi-sample micro-batches (an empty micro-batch
    only when every micro-batch holds one sample); then micro-batches go to ranks by equal-count
    Karmarkar-Karp on tokens (``balance_data``) or round robin. Fixed: ``micro_batch_size`` samples per
    micro-batch; with ``balance_data`` samples are first split over ranks by equal-count KK.

    Raises:
        ValueError: dynamic batching without ``max_tokens_per_gpu``, or a fixed schedule that cannot
            give every rank the same number of micro-batches.
    """
    if dp_size <= 0:
        raise ValueError(f"data-parallel size must be positive, got {dp_size}")
    n = len(lengths)
    if use_dynamic_batch_size:
        if not max_tokens_per_gpu:
            raise ValueError("spec.perf.useDynamicBatchSize needs spec.perf.maxTokensPerGpu")
        budget = token_budget(max_tokens_per_gpu, cp_size)
        plan = _pack_then_assign(lengths, budget, dp_size, balance_data)
        if balance_data and dp_size > 1:
            other = _assign_then_pack(lengths, budget, dp_size)
            if (other.num_micro_batches, other.imbalance()) < (
                plan.num_micro_batches,
                plan.imbalance(),
            ):
                plan = other
        return plan

    if balance_data:
        if n % dp_size:
            raise ValueError(
                f"spec.rollout.balanceData with fixed micro-batches needs the step's {n} samples to "
                f"divide evenly over {dp_size} data-parallel ranks"
            )
        shares = equal_count_partition(list(lengths), dp_size)
        ranks = tuple(
            tuple(
                tuple(share[j] for j in mb)
                for mb in fixed_micro_batches(len(share), micro_batch_size)
            )
            for share in shares
        )
    else:
        chunks = fixed_micro_batches(n, micro_batch_size)
        if len(chunks) % dp_size:
            raise ValueError(
                f"{n} samples make {len(chunks)} micro-batches of rollout.microBatchSize="
                f"{micro_batch_size}, not divisible by {dp_size} data-parallel ranks; change "
                "microBatchSize or turn on perf.useDynamicBatchSize"
            )
        ranks = tuple(tuple(tuple(c) for c in chunks[r::dp_size]) for r in range(dp_size))
    return StepPlan(ranks=ranks, lengths=tuple(lengths), budget=None)


def _split_until(bins: list[list[int]], target: int, lengths: Sequence[int]) -> list[list[int]]:
    """Return ``bins`` grown to ``target`` micro-batches by halving the fullest multi-sample ones
    (an empty micro-batch only when every one holds a single sample)."""
    bins = [list(b) for b in bins]
    while len(bins) < target:
        splittable = [b for b in bins if len(b) > 1]
        if not splittable:
            bins.append([])
            continue
        fullest = max(splittable, key=lambda b: (sum(lengths[i] for i in b), -b[0]))
        bins.remove(fullest)
        bins.extend(split_in_two(fullest, lengths))
    return bins


def _rank_order(bins: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[MicroBatch, ...]:
    """Fullest micro-batch first, so a step that would run out of memory does so at once."""
    return tuple(
        tuple(b) for b in sorted(bins, key=lambda b: (-sum(lengths[i] for i in b), tuple(b)))
    )


def _pack_then_assign(lengths: Sequence[int], budget: int, dp_size: int, balance: bool) -> StepPlan:
    """FFD over the whole step, then micro-batches to ranks (equal-count KK or round robin)."""
    bins = pack_micro_batches(lengths, budget)
    bins = _split_until(bins, -(-max(len(bins), 1) // dp_size) * dp_size, lengths)
    weights = [sum(lengths[i] for i in b) for b in bins]
    if balance:
        groups = equal_count_partition(weights, dp_size)
    else:
        groups = [list(range(r, len(bins), dp_size)) for r in range(dp_size)]
    ranks = tuple(_rank_order([bins[j] for j in g], lengths) for g in groups)
    return StepPlan(ranks=ranks, lengths=tuple(lengths), budget=budget)


def _assign_then_pack(lengths: Sequence[int], budget: int, dp_size: int) -> StepPlan:
    """Samples to ranks by greedy LPT on tokens (fine-grained, so nearly exact), then FFD per rank,
    then the ranks with fewer micro-batches halve their fullest ones to match."""
    shares: list[list[int]] = [[] for _ in range(dp_size)]
    load = [0] * dp_size
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(dp_size), key=lambda r: (load[r], r))
        shares[r].append(i)
        load[r] += lengths[i]
    per_rank: list[list[list[int]]] = []
    for share in shares:
        local = pack_micro_batches([lengths[i] for i in share], budget)
        per_rank.append([[share[j] for j in b] for b in local])
    k = max(1, *(len(b) for b in per_rank))
    ranks = tuple(_rank_order(_split_until(b, k, lengths), lengths) for b in per_rank)
    return StepPlan(ranks=ranks, lengths=tuple(lengths), budget=budget)


# ---- packed-sequence layout ----------------------------------------------------------------------


@dataclass(frozen=True)
class PackedBatch:
    """A micro-batch laid out as one row of N tokens (THD / varlen attention), sequences back to back.

    Padding up to ``pad_to_multiple`` (for TP/SP divisibility) forms its own trailing segment in
    ``cu_seqlens``, so real tokens never attend to it.
    """

    input_ids: Tensor  # (N,) long
    position_ids: Tensor  # (N,) long, restarting at 0 in every sequence
    cu_seqlens: Tensor  # (B+1,) int32, or (B+2,) with a padding segment
    max_seqlen: int
    num_sequences: int  # B, real sequences

    def unpack(self, values: Tensor) -> list[Tensor]:
        """Split per-token values (N, ...) back into the B sequences (L_i, ...), padding dropped."""
        bounds = cast(list[int], self.cu_seqlens.tolist())  # pyright: ignore[reportUnknownMemberType]
        return [values[bounds[i] : bounds[i + 1]] for i in range(self.num_sequences)]

    def response_index(self, prompt_lens: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Return (logit positions (M,), target positions (M,)) of all response tokens, M = sum R_i.

        Token t is predicted by the logits at t-1, so sample i's response targets are
        start_i + P_i .. start_i + L_i - 1 and its logits sit one position earlier.
        """
        bounds = cast(list[int], self.cu_seqlens.tolist())  # pyright: ignore[reportUnknownMemberType]
        targets = [
            torch.arange(bounds[i] + p, bounds[i + 1])
            for i, p in zip(range(self.num_sequences), prompt_lens, strict=True)
        ]
        target_index = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)
        return target_index - 1, target_index


def pack_sequences(
    sequences: Sequence[Sequence[int]], *, pad_to_multiple: int = 1, pad_id: int = 0
) -> PackedBatch:
    """Return the packed layout (ids, positions, cu_seqlens) of one micro-batch's token lists."""
    lengths = [len(s) for s in sequences]
    total = sum(lengths)
    padded = -(-total // pad_to_multiple) * pad_to_multiple if total else 0
    ids = torch.full((padded,), pad_id, dtype=torch.long)  # (N,)
    positions = torch.zeros(padded, dtype=torch.long)  # (N,)
    bounds = [0]
    for seq, n in zip(sequences, lengths, strict=True):
        start = bounds[-1]
        ids[start : start + n] = torch.as_tensor(list(seq), dtype=torch.long)
        positions[start : start + n] = torch.arange(n)
        bounds.append(start + n)
    if padded > total:
        positions[total:] = torch.arange(padded - total)
        bounds.append(padded)
    return PackedBatch(
        input_ids=ids,
        position_ids=positions,
        cu_seqlens=torch.tensor(bounds, dtype=torch.int32),
        max_seqlen=max([*lengths, padded - total, 0]),
        num_sequences=len(sequences),
    )
