"""Dynamic batch size: packing invariants, DP balancing, fixed micro-batches, packed layout."""

from __future__ import annotations

import math
import random

import pytest
import torch

from kuberl.worker.algo.packing import (
    equal_count_partition,
    fixed_micro_batches,
    pack_micro_batches,
    pack_sequences,
    plan_step,
    split_in_two,
    token_budget,
)


def random_lengths(seed: int, n: int = 64, cap: int = 100) -> list[int]:
    rng = random.Random(seed)
    return [min(cap, max(1, int(rng.lognormvariate(3.0, 0.8)))) for _ in range(n)]


def next_fit_bins(lengths: list[int], budget: int) -> int:
    """Naive in-order greedy: close the micro-batch as soon as the next sample does not fit."""
    bins, used = 0, budget
    for n in lengths:
        if used + n > budget:
            bins, used = bins + 1, 0
        used += n
    return bins


class TestPackMicroBatches:
    def test_first_fit_decreasing_matches_hand_packing(self) -> None:
        # 9 -> b0 (1 left), 8 -> b1 (2 left), 5 -> b2, 3 -> b2, 2 -> b1, 1 -> b0
        assert pack_micro_batches([5, 3, 8, 2, 9, 1], 10) == [[4, 5], [2, 3], [0, 1]]

    def test_over_long_sample_goes_alone_and_is_not_truncated(self) -> None:
        bins = pack_micro_batches([3, 25, 4], 10)
        assert [1] in bins
        assert sorted(i for b in bins for i in b) == [0, 1, 2]

    @pytest.mark.parametrize("seed", range(5))
    def test_every_sample_once_and_budget_respected(self, seed: int) -> None:
        lengths = random_lengths(seed)
        bins = pack_micro_batches(lengths, 120)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 120 or len(b) == 1 for b in bins)
        assert len(bins) <= next_fit_bins(lengths, 120)

    def test_empty_input_and_bad_budget(self) -> None:
        assert pack_micro_batches([], 10) == []
        with pytest.raises(ValueError):
            pack_micro_batches([1], 0)


def test_token_budget_multiplies_by_context_parallel_size() -> None:
    assert token_budget(4608, 2) == 9216
    with pytest.raises(ValueError, match="maxTokensPerGpu"):
        token_budget(0)


def test_fixed_micro_batches_are_consecutive_chunks() -> None:
    assert fixed_micro_batches(5, 2) == [[0, 1], [2, 3], [4]]


def test_split_in_two_balances_tokens() -> None:
    a, b = split_in_two([0, 1, 2, 3], [7, 5, 4, 2])  # 7+2 vs 5+4
    assert (sorted(a), sorted(b)) == ([0, 3], [1, 2])


class TestEqualCountPartition:
    def test_hand_example_is_perfectly_balanced(self) -> None:
        parts = equal_count_partition([8, 7, 6, 5, 4, 3, 2, 1], 2)
        assert [len(p) for p in parts] == [4, 4]
        assert sorted(sum(8 - i for i in p) for p in parts) == [18, 18]

    @pytest.mark.parametrize("seed", range(3))
    def test_beats_round_robin_on_random_weights(self, seed: int) -> None:
        w = random_lengths(seed, n=48)
        parts = equal_count_partition(w, 4)
        assert sorted(i for p in parts for i in p) == list(range(48))
        assert all(len(p) == 12 for p in parts)
        spread = max(sum(w[i] for i in p) for p in parts) - min(sum(w[i] for i in p) for p in parts)
        rr = [sum(w[r::4]) for r in range(4)]
        assert spread <= max(rr) - min(rr)

    def test_uneven_count_is_rejected(self) -> None:
        with pytest.raises(ValueError):
            equal_count_partition([1, 2, 3], 2)


class TestPlanStep:
    def test_hand_example_efficiency_and_imbalance(self) -> None:
        # Samples to ranks by LPT: {9, 4, 4, 1} and {8, 5, 3, 2}, 18 tokens each; FFD per rank gives
        # [9, 1] [4, 4] and [8, 2] [5, 3]. (Packing first would give ranks of 19 and 17 tokens.)
        plan = plan_step(
            [5, 3, 8, 2, 9, 1, 4, 4], dp_size=2, max_tokens_per_gpu=10, balance_data=True
        )
        assert plan.num_micro_batches == 2
        assert plan.ranks == (((4, 5), (6, 7)), ((2, 3), (0, 1)))
        # 36 real tokens in 2 ranks x 2 micro-batches x 10 slots
        assert plan.efficiency() == pytest.approx(36 / 40)
        assert plan.rank_tokens() == [18, 18]
        assert plan.imbalance() == 1.0

    def test_round_robin_hand_example(self) -> None:
        # FFD: [9, 1] [8, 2] [5, 4] [4, 3] -> rank 0 takes micro-batches 0 and 2, rank 1 takes 1 and 3
        plan = plan_step([5, 3, 8, 2, 9, 1, 4, 4], dp_size=2, max_tokens_per_gpu=10)
        assert plan.ranks == (((4, 5), (0, 6)), ((2, 3), (1, 7)))
        assert plan.rank_tokens() == [19, 17]
        assert plan.imbalance() == pytest.approx(19 / 18)

    @pytest.mark.parametrize("dp", [1, 2, 3, 4])
    @pytest.mark.parametrize("balance", [False, True])
    def test_every_rank_gets_the_same_number_of_micro_batches(self, dp: int, balance: bool) -> None:
        lengths = random_lengths(7, n=37)
        plan = plan_step(
            lengths, dp_size=dp, max_tokens_per_gpu=60, cp_size=2, balance_data=balance
        )
        assert len(plan.ranks) == dp
        assert len({len(r) for r in plan.ranks}) == 1
        assert sorted(i for r in plan.ranks for mb in r for i in mb) == list(range(37))
        assert all(
            sum(lengths[i] for i in mb) <= 120 or len(mb) == 1 for r in plan.ranks for mb in r
        )

    def test_balancing_lowers_imbalance_against_round_robin(self) -> None:
        lengths = random_lengths(11, n=128, cap=200)
        kw = dict(dp_size=4, max_tokens_per_gpu=256)
        balanced = plan_step(lengths, balance_data=True, **kw)
        plain = plan_step(lengths, balance_data=False, **kw)
        assert balanced.imbalance() <= plain.imbalance()
        assert balanced.imbalance() < 1.05

    def test_micro_batch_count_is_rounded_up_by_splitting(self) -> None:
        # FFD gives 2 micro-batches [9,1] [8,2]; three ranks need 3: the fuller one is halved
        plan = plan_step([9, 1, 8, 2], dp_size=3, max_tokens_per_gpu=10)
        assert plan.num_micro_batches == 1
        assert sorted(sorted(mb) for r in plan.ranks for mb in r) == [[0], [1], [2, 3]]

    def test_balanced_plan_prefers_the_schedule_with_less_imbalance(self) -> None:
        # packing first: ranks of 9, 1, 10 tokens; samples first (LPT): 9, 8, 2+1
        plan = plan_step([9, 1, 8, 2], dp_size=3, max_tokens_per_gpu=10, balance_data=True)
        assert sorted(plan.rank_tokens()) == [3, 8, 9]

    def test_single_sample_micro_batches_are_padded_with_empty_ones(self) -> None:
        plan = plan_step([9, 9], dp_size=4, max_tokens_per_gpu=10)
        assert sorted(len(mb) for r in plan.ranks for mb in r) == [0, 0, 1, 1]

    def test_fixed_micro_batches_round_robin_over_ranks(self) -> None:
        plan = plan_step([1] * 8, dp_size=2, use_dynamic_batch_size=False, micro_batch_size=2)
        assert plan.ranks == (((0, 1), (4, 5)), ((2, 3), (6, 7)))
        assert plan.budget is None

    def test_fixed_micro_batches_with_balance_split_samples_first(self) -> None:
        plan = plan_step(
            [8, 7, 6, 5, 4, 3, 2, 1],
            dp_size=2,
            use_dynamic_batch_size=False,
            micro_batch_size=2,
            balance_data=True,
        )
        assert plan.rank_tokens() == [18, 18]
        assert plan.num_micro_batches == 2

    def test_fixed_micro_batches_that_cannot_line_up_are_an_error(self) -> None:
        with pytest.raises(ValueError, match="microBatchSize"):
            plan_step([1] * 6, dp_size=2, use_dynamic_batch_size=False, micro_batch_size=2)

    def test_dynamic_without_budget_is_an_error(self) -> None:
        with pytest.raises(ValueError, match="maxTokensPerGpu"):
            plan_step([1, 2], use_dynamic_batch_size=True)

    def test_metrics_are_namespaced(self) -> None:
        plan = plan_step([5, 5], dp_size=1, max_tokens_per_gpu=10)
        assert plan.metrics() == {
            "perf/packing_efficiency": 1.0,
            "perf/dp_imbalance": 1.0,
            "perf/micro_batches_per_rank": 1.0,
        }


class TestPackSequences:
    def test_layout_positions_and_padding_segment(self) -> None:
        packed = pack_sequences([[5, 6, 7], [8, 9]], pad_to_multiple=4, pad_id=0)
        assert packed.input_ids.tolist() == [5, 6, 7, 8, 9, 0, 0, 0]
        assert packed.position_ids.tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
        assert packed.cu_seqlens.tolist() == [0, 3, 5, 8]
        assert packed.cu_seqlens.dtype == torch.int32
        assert (packed.max_seqlen, packed.num_sequences) == (3, 2)

    def test_no_padding_segment_when_already_aligned(self) -> None:
        packed = pack_sequences([[1, 2], [3, 4]], pad_to_multiple=2)
        assert packed.cu_seqlens.tolist() == [0, 2, 4]

    def test_unpack_drops_padding(self) -> None:
        packed = pack_sequences([[5, 6, 7], [8, 9]], pad_to_multiple=4)
        parts = packed.unpack(packed.input_ids)
        assert [p.tolist() for p in parts] == [[5, 6, 7], [8, 9]]

    def test_response_index_points_logits_one_before_targets(self) -> None:
        # sample 0: prompt 2 of 3 tokens -> target 2; sample 1 (starts at 3): prompt 1 of 2 -> target 4
        packed = pack_sequences([[5, 6, 7], [8, 9]], pad_to_multiple=4)
        logit_pos, target_pos = packed.response_index([2, 1])
        assert target_pos.tolist() == [2, 4]
        assert logit_pos.tolist() == [1, 3]
        assert packed.input_ids[target_pos].tolist() == [7, 9]


def first_fit_in_order_bins(lengths: list[int], budget: int) -> int:
    """slime's dynamic batching: first fit in sample order."""
    room: list[int] = []
    for n in lengths:
        for b, free in enumerate(room):
            if n <= free:
                room[b] -= n
                break
        else:
            room.append(budget - n)
    return len(room)


@pytest.mark.parametrize("median", [1536, 3072, 5120])
def test_balanced_plan_beats_in_order_first_fit_on_long_tailed_lengths(median: int) -> None:
    rng = random.Random(median)
    lengths = [
        min(8192, max(1, round(rng.lognormvariate(math.log(median), 0.6)))) for _ in range(96)
    ]
    budget, dp = 9216, 2
    plan = plan_step(lengths, dp_size=dp, max_tokens_per_gpu=4608, cp_size=2, balance_data=True)
    in_order = -(-first_fit_in_order_bins(lengths, budget) // dp)
    assert plan.num_micro_batches <= in_order
    assert plan.imbalance() < 1.01
    assert plan.efficiency() > 0.85
