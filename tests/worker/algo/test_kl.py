"""KL estimators against values worked out by hand (lr = logprobs - ref_logprobs)."""

from __future__ import annotations

import math

import pytest
import torch

from kuberl.worker.algo.kl import KlType, approx_kl, masked_kl

# lr = [-1 - (-1.5), -2 - (-1)] = [0.5, -1.0]
LOGPROBS = torch.tensor([-1.0, -2.0])
REF = torch.tensor([-1.5, -1.0])


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("k1", [0.5, -1.0]),
        ("k2", [0.5**2 / 2, 1.0**2 / 2]),
        # r = pi_ref / pi = exp(-lr): r - 1 - log r
        ("k3", [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]),
        ("low_var_kl", [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0]),
    ],
)
def test_estimator_matches_hand_value(kind: str, expected: list[float]) -> None:
    torch.testing.assert_close(approx_kl(LOGPROBS, REF, kind), torch.tensor(expected))


def test_low_var_kl_is_clamped_at_ten_but_k3_is_not() -> None:
    lp, ref = torch.tensor([-15.0]), torch.tensor([0.0])  # log r = 15
    assert approx_kl(lp, ref, KlType.LOW_VAR_KL).item() == 10.0
    assert approx_kl(lp, ref, KlType.K3).item() == pytest.approx(math.exp(15) - 16, rel=1e-6)


def test_all_estimators_are_zero_when_policies_agree() -> None:
    lp = torch.tensor([-0.3, -4.0, -0.01])
    for kind in KlType:
        assert torch.equal(approx_kl(lp, lp.clone(), kind), torch.zeros(3))


def test_k2_and_k3_are_never_negative() -> None:
    g = torch.Generator().manual_seed(0)
    lp, ref = -torch.rand(100, generator=g) * 5, -torch.rand(100, generator=g) * 5
    for kind in ("k2", "k3", "low_var_kl"):
        assert (approx_kl(lp, ref, kind) >= 0).all()


def test_bfloat16_inputs_are_computed_in_float32_and_float64_is_kept() -> None:
    assert approx_kl(LOGPROBS.bfloat16(), REF.bfloat16(), "k1").dtype == torch.float32
    assert approx_kl(LOGPROBS.double(), REF.double(), "k3").dtype == torch.float64


def test_unknown_estimator_names_the_field_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"klLossType.*'k4'.*low_var_kl"):
        approx_kl(LOGPROBS, REF, "k4")


def test_masked_kl_zeroes_untrained_tokens() -> None:
    out = masked_kl(LOGPROBS, REF, torch.tensor([0.0, 1.0]), "k1")
    torch.testing.assert_close(out, torch.tensor([0.0, -1.0]))


@pytest.mark.parametrize("gap", [88.5, 100.0, 1e4])
def test_low_var_kl_gradient_is_finite_when_ref_exceeds_logp_by_more_than_88(gap: float) -> None:
    # exp(ref - logp) overflows float32 above ~88.7; clamping after exp made the gradient 0 * inf = NaN.
    logp = torch.tensor([-gap - 1.0, -1.0, -2.0], requires_grad=True)
    ref = torch.tensor([-1.0, -1.5, -1.0])
    kl = approx_kl(logp, ref, "low_var_kl")
    kl.sum().backward()
    assert logp.grad is not None and torch.isfinite(logp.grad).all()
    assert kl[0].item() == 10.0 and logp.grad[0].item() == 0.0  # clamped: no pull from that token
    # the in-range tokens keep k3's value and gradient d/dlogp (e^{ref-logp} - 1 - (ref-logp))
    torch.testing.assert_close(kl[1:], approx_kl(logp.detach()[1:], ref[1:], "k3"))
    expected = [1.0 - math.exp(-0.5), 1.0 - math.exp(1.0)]
    torch.testing.assert_close(logp.grad[1:], torch.tensor(expected))


def test_low_var_kl_bf16_far_apart_policies_stay_finite() -> None:
    logp = torch.tensor([-120.0, -0.5], dtype=torch.bfloat16, requires_grad=True)
    ref = torch.tensor([-0.5, -120.0], dtype=torch.bfloat16)
    approx_kl(logp, ref, "low_var_kl").sum().backward()
    assert logp.grad is not None and torch.isfinite(logp.grad.float()).all()
