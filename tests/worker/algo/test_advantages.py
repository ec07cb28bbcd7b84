"""Advantage estimators against small hand-computed examples, and their edge cases."""

from __future__ import annotations

import math

import pytest
import torch

from kuberl.worker.algo.advantages import (
    broadcast_to_tokens,
    compute_advantages,
    discounted_returns,
    group_advantages,
    masked_whiten,
    reinforce_plus_plus,
    reinforce_plus_plus_baseline,
    reinforce_plus_plus_returns,
    zero_std_group_count,
)


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float32)


class TestGroupAdvantages:
    def test_one_correct_of_three_matches_hand_value(self) -> None:
        # mean 1/3; deviations 2/3, -1/3, -1/3; unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3
        std = math.sqrt(1 / 3)
        expected = t(2 / 3 / (std + 1e-6), -1 / 3 / (std + 1e-6), -1 / 3 / (std + 1e-6))
        torch.testing.assert_close(group_advantages(t(1, 0, 0), 3), expected)

    def test_groups_are_normalised_separately(self) -> None:
        out = group_advantages(t(1, 0, 5, 7), 2)
        # (1, 0): deviations +-0.5, unbiased std 0.5*sqrt(2); (5, 7): deviations -+1, std sqrt(2)
        a = 0.5 / (0.5 * math.sqrt(2) + 1e-6)
        b = 1.0 / (math.sqrt(2) + 1e-6)
        torch.testing.assert_close(out, t(a, -a, -b, b))

    def test_identical_rewards_give_exact_zeros_not_nan(self) -> None:
        out = group_advantages(t(1, 1, 1, 1, 0, 0, 0, 0), 4)
        assert torch.equal(out, torch.zeros(8))

    def test_eight_identical_fractional_rewards_give_exactly_zero(self) -> None:
        # float32 mean of eight 0.7s is one ulp off 0.7; divided by (0 + 1e-6) that was +0.056 each.
        for std_normalization in (True, False):
            out = group_advantages(torch.full((8,), 0.7), 8, std_normalization=std_normalization)
            assert torch.equal(out, torch.zeros(8))
        mixed = group_advantages(t(0.7, 0.7, 0.7, 0.7, 0.3, 0.3, 0.3, 0.3), 4)
        assert torch.equal(mixed, torch.zeros(8))
        assert zero_std_group_count(torch.full((8,), 0.7), 8) == 1

    def test_std_normalisation_off_only_removes_the_mean(self) -> None:
        out = group_advantages(t(1, 0, 0), 3, std_normalization=False)
        torch.testing.assert_close(out, t(2 / 3, -1 / 3, -1 / 3))

    def test_eps_keeps_a_tiny_spread_finite(self) -> None:
        out = group_advantages(t(1e-9, 0), 2, eps=1e-6)
        assert torch.isfinite(out).all()
        assert out.abs().max() < 1e-2  # the eps dominates a spread far below it

    def test_group_of_one_gives_zero_without_dividing(self) -> None:
        assert torch.equal(group_advantages(t(3, 1), 1), torch.zeros(2))

    def test_uneven_counts_fall_back_to_one_group(self) -> None:
        torch.testing.assert_close(group_advantages(t(1, 0, 0), 2), group_advantages(t(1, 0, 0), 3))


def test_zero_std_group_count_counts_groups_with_equal_rewards() -> None:
    rewards = t(1, 1, 0, 1, 0, 0, 0, 0, 1, 1, 1, 1)
    assert zero_std_group_count(rewards, 4) == 2
    assert zero_std_group_count(t(1, 0), 1) == 2  # singletons carry no group signal


def test_broadcast_copies_each_sequence_value_to_its_tokens() -> None:
    out = broadcast_to_tokens(t(0.5, -2.0), [3, 1])
    assert [x.tolist() for x in out] == [[0.5, 0.5, 0.5], [-2.0]]
    with pytest.raises(ValueError):
        broadcast_to_tokens(t(1.0), [1, 2])


class TestWhiten:
    def test_masked_whiten_matches_hand_value(self) -> None:
        # trained values 1, 2, 3: mean 2, unbiased var 1; the masked 100 is ignored by the stats
        out = masked_whiten([t(1, 2, 100), t(3)], [t(1, 1, 0), t(1)])
        scale = 1 / math.sqrt(1 + 1e-8)
        torch.testing.assert_close(out[0][:2], t(-scale, 0.0))
        torch.testing.assert_close(out[1], t(scale))

    def test_empty_mask_returns_values_unchanged(self) -> None:
        out = masked_whiten([t(1, 2)], [t(0, 0)])
        assert torch.equal(out[0], t(1, 2))


class TestReinforce:
    def test_discounted_returns_match_hand_values(self) -> None:
        # G2 = 3; G1 = 2 + 0.5 * 3 = 3.5; G0 = 1 + 0.5 * 3.5 = 2.75
        torch.testing.assert_close(discounted_returns(t(1, 2, 3), 0.5), t(2.75, 3.5, 3.0))
        torch.testing.assert_close(discounted_returns(t(1, 2, 3), 1.0), t(6, 5, 3))

    def test_returns_put_the_reward_on_the_last_trained_token(self) -> None:
        # token rewards -0.5 * [0.1, 0.2, masked] = [-0.05, -0.1, 0]; reward 1 at index 1
        out = reinforce_plus_plus_returns(
            t(1.0), [t(0.1, 0.2, 0.3)], [t(1, 1, 0)], kl_coef=0.5, gamma=1.0
        )
        torch.testing.assert_close(out[0], t(0.85, 0.9, 0.0))

    def test_fully_masked_sample_gets_no_reward_and_no_nan(self) -> None:
        out = reinforce_plus_plus_returns(t(1.0), [t(0.1, 0.1)], [t(0, 0)], kl_coef=1.0, gamma=1.0)
        assert torch.equal(out[0], t(0, 0))

    def test_reinforce_plus_plus_whitens_the_returns(self) -> None:
        # returns: [0.85, 0.9] and [-0.5 * 0.2] = [-0.1]; mean 0.55;
        # squared deviations 0.09 + 0.1225 + 0.4225 = 0.635, unbiased var 0.3175
        out = reinforce_plus_plus(
            t(1.0, 0.0), [t(0.1, 0.2), t(0.2)], [t(1, 1), t(1)], kl_coef=0.5, gamma=1.0
        )
        s = math.sqrt(0.3175 + 1e-8)
        torch.testing.assert_close(torch.cat(out), t(0.3 / s, 0.35 / s, -0.65 / s))

    def test_baseline_variant_subtracts_group_mean_and_kl_then_whitens(self) -> None:
        # centred rewards [0.5, -0.5]; minus 0.5 * kl: [0.4, 0.4] and [-0.7]
        # mean 0.1/3; squared deviations sum 0.806667, unbiased var 0.403333
        out = reinforce_plus_plus_baseline(
            t(1.0, 0.0), [t(0.2, 0.2), t(0.4)], [t(1, 1), t(1)], 2, kl_coef=0.5
        )
        mean = 0.1 / 3
        var = ((0.4 - mean) ** 2 * 2 + (-0.7 - mean) ** 2) / 2
        s = math.sqrt(var + 1e-8)
        torch.testing.assert_close(
            torch.cat(out), t((0.4 - mean) / s, (0.4 - mean) / s, (-0.7 - mean) / s)
        )


class TestComputeAdvantages:
    def test_grpo_broadcasts_group_advantages(self) -> None:
        out = compute_advantages(t(1, 0), [2, 3], 2, {"advantage_estimator": "grpo"})
        a = 0.5 / (1 / math.sqrt(2) + 1e-6)
        torch.testing.assert_close(torch.cat(out), t(a, a, -a, -a, -a))

    def test_gspo_uses_the_grpo_advantage(self) -> None:
        grpo = compute_advantages(t(1, 0, 0), [1, 1, 1], 3, {"advantage_estimator": "grpo"})
        gspo = compute_advantages(t(1, 0, 0), [1, 1, 1], 3, {"advantage_estimator": "gspo"})
        assert all(torch.equal(a, b) for a, b in zip(grpo, gspo, strict=True))

    def test_normalize_advantages_whitens_grpo(self) -> None:
        out = compute_advantages(t(1, 0, 0, 0), [2, 1, 1, 3], 2, {"normalize_advantages": True})
        flat = torch.cat(out)
        assert flat.mean().abs() < 1e-6
        assert flat.std().item() == pytest.approx(1.0, abs=1e-4)

    def test_disabling_std_normalisation_reaches_grpo(self) -> None:
        out = compute_advantages(t(1, 0, 0), [1, 1, 1], 3, {"grpo_std_normalization": False})
        torch.testing.assert_close(torch.cat(out), t(2 / 3, -1 / 3, -1 / 3))

    def test_reinforce_with_kl_coef_needs_kl(self) -> None:
        algo = {"advantage_estimator": "reinforce_plus_plus", "kl_coef": 0.1}
        with pytest.raises(ValueError, match="klCoef"):
            compute_advantages(t(1, 0), [1, 1], 2, algo)

    def test_reinforce_without_kl_coef_runs_on_rewards_alone(self) -> None:
        algo = {"advantage_estimator": "reinforce_plus_plus", "kl_coef": 0.0}
        out = compute_advantages(t(1, 0), [2, 1], 2, algo)
        # returns [1, 1] and [0]: mean 2/3, unbiased var 1/3
        s = math.sqrt(1 / 3 + 1e-8)
        torch.testing.assert_close(torch.cat(out), t(1 / 3 / s, 1 / 3 / s, -2 / 3 / s))

    def test_reinforce_baseline_dispatch_uses_given_kl_and_masks(self) -> None:
        algo = {"advantage_estimator": "reinforce_plus_plus_baseline", "kl_coef": 0.5}
        out = compute_advantages(
            t(1, 0), [2, 1], 2, algo, kl=[t(0.2, 0.2), t(0.4)], loss_masks=[t(1, 1), t(1)]
        )
        direct = reinforce_plus_plus_baseline(
            t(1, 0), [t(0.2, 0.2), t(0.4)], [t(1, 1), t(1)], 2, kl_coef=0.5
        )
        assert all(torch.equal(a, b) for a, b in zip(out, direct, strict=True))

    def test_unknown_estimator_is_rejected(self) -> None:
        with pytest.raises(ValueError):
            compute_advantages(t(1), [1], 1, {"advantage_estimator": "ppo"})
