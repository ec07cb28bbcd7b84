"""Data-parallel shares: a pure, deterministic, token-balanced partition that reassembles exactly."""

from __future__ import annotations

import itertools
import random

import pytest

from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.dp_shard import shard_for_rank, shard_indices, unshard

# Every length list of up to 6 samples over lengths {1, 2, 5, 9}, split over 1-4 ranks: 5 461 cases.
SMALL_CASES = [
    (list(lengths), dp)
    for n in range(7)
    for lengths in itertools.product((1, 2, 5, 9), repeat=n)
    for dp in range(1, 5)
]


def test_every_small_case_is_a_partition_with_bounded_imbalance() -> None:
    for lengths, dp in SMALL_CASES:
        shares = shard_indices(lengths, dp)
        assert len(shares) == dp
        flat = sorted(i for share in shares for i in share)
        assert flat == list(range(len(lengths))), (lengths, dp)
        assert all(share == sorted(share) for share in shares)
        loads = [sum(lengths[i] for i in share) for share in shares]
        # Greedy longest-first onto the least loaded rank: the busiest rank is at most one sample
        # above the least loaded one.
        assert max(loads) - min(loads) <= max(lengths, default=0), (lengths, dp, shares)


def test_equal_lengths_split_evenly_by_count() -> None:
    for n, dp in itertools.product(range(20), range(1, 6)):
        counts = [len(s) for s in shard_indices([7] * n, dp)]
        assert max(counts) - min(counts) <= 1, (n, dp, counts)


def test_the_split_depends_only_on_lengths_and_size() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 4000) for _ in range(257)]
    first = shard_indices(lengths, 8)
    assert all(shard_indices(list(lengths), 8) == first for _ in range(3))
    # Shares of each rank, computed independently, agree with the whole partition.
    samples = [TrainSample(tokens=[0] * n, prompt_len=1, advantages=[], loss_mask=[]) for n in lengths]
    for rank in range(8):
        assert list(shard_for_rank(samples, rank, 8).indices) == first[rank]


def test_large_random_steps_are_balanced_within_one_sample() -> None:
    rng = random.Random(1)
    for dp in (2, 3, 8, 64):
        lengths = [rng.randint(16, 8192) for _ in range(512)]
        loads = [sum(lengths[i] for i in s) for s in shard_indices(lengths, dp)]
        assert max(loads) - min(loads) <= max(lengths)
        assert max(loads) / (sum(lengths) / dp) < 1.1


def test_shard_is_a_sequence_of_the_ranks_samples_in_original_order() -> None:
    samples = [TrainSample(tokens=list(range(n)), prompt_len=1, advantages=[], loss_mask=[])
               for n in (3, 9, 4, 9, 2)]
    shards = [shard_for_rank(samples, r, 2) for r in range(2)]
    for shard in shards:
        assert list(shard) == [samples[i] for i in shard.indices]
        assert len(shard) == len(shard.indices) and shard[0] is samples[shard.indices[0]]
    assert sorted(shards[0].indices + shards[1].indices) == list(range(5))


def test_more_ranks_than_samples_leaves_empty_shares() -> None:
    shares = shard_indices([5, 3], 4)
    assert sorted(len(s) for s in shares) == [0, 0, 1, 1]


def test_custom_length_function() -> None:
    items = ["aaaa", "b", "cc", "ddd"]
    shard = shard_for_rank(items, 0, 2, length=len)
    other = shard_for_rank(items, 1, 2, length=len)
    assert sum(map(len, shard)) == sum(map(len, other)) == 5


def test_unshard_restores_original_order_for_every_small_case() -> None:
    for lengths, dp in SMALL_CASES[::7]:
        values = [f"v{i}" for i in range(len(lengths))]
        parts = [(share, [values[i] for i in share]) for share in shard_indices(lengths, dp)]
        assert unshard(parts, len(values)) == values


@pytest.mark.parametrize(
    "parts, n, match",
    [
        ([([0, 1], ["a", "b"])], 3, "miss"),
        ([([0, 1], ["a", "b"]), ([1, 2], ["b", "c"])], 3, "repeated"),
        ([([0, 3], ["a", "b"])], 3, "out of range"),
        ([([0, 1], ["a"])], 2, "indices but"),
    ],
)
def test_unshard_rejects_parts_that_do_not_partition(parts, n, match) -> None:
    with pytest.raises(ValueError, match=match):
        unshard(parts, n)


@pytest.mark.parametrize("dp_rank, dp_size", [(2, 2), (-1, 2), (0, 0)])
def test_invalid_rank_or_size_is_refused(dp_rank: int, dp_size: int) -> None:
    with pytest.raises(ValueError):
        shard_for_rank([1, 2, 3], dp_rank, dp_size, length=int)
