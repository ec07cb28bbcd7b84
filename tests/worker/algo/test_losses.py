"""Policy loss terms against hand-computed values, and the packing invariance of loss and gradients.

The invariance tests here drive ``policy_loss_sum`` through ``plan_step``/``pack_sequences``, the packer the
Megatron backend uses, on a toy packed model; the torch backend's own ``train_step`` is proved invariant in
tests/worker/train/test_torch_backend_packing.py.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest
import torch
from torch import nn

from kuberl.worker.algo.advantages import group_advantages
from kuberl.worker.algo.losses import (
    LossConfig,
    LossNormalizer,
    LossOutput,
    entropy_from_logits,
    grpo_loss_sum,
    logprobs_from_logits,
    merge_metrics,
    policy_loss_sum,
    ppo_clip_loss,
)
from kuberl.worker.algo.packing import pack_sequences, plan_step


def t(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


def ln(*xs: float) -> torch.Tensor:
    return torch.log(t(*xs))


# ---- PPO clip --------------------------------------------------------------------------------------


def test_ppo_clip_matches_hand_values_with_clip_higher() -> None:
    ratio = t(0.5, 1.0, 1.5, 1.5, 0.5)
    adv = t(1, 1, 1, -1, -1)
    loss, clipped = ppo_clip_loss(ratio, adv, eps_clip=0.2, eps_clip_high=0.28)
    # A>0: max(-r, -clip(r)) -> -0.5, -1, -1.28 (clipped at 1.28); A<0: max(r, clip(r)) -> 1.5, 0.8
    torch.testing.assert_close(loss, t(-0.5, -1.0, -1.28, 1.5, 0.8))
    assert clipped.tolist() == [False, False, True, False, True]


def test_dual_clip_caps_negative_advantage_losses() -> None:
    ratio, adv = t(5.0, 5.0), t(-1.0, 1.0)
    plain, _ = ppo_clip_loss(ratio, adv, eps_clip=0.2, eps_clip_high=0.2)
    dual, _ = ppo_clip_loss(ratio, adv, eps_clip=0.2, eps_clip_high=0.2, eps_clip_c=3.0)
    torch.testing.assert_close(plain, t(5.0, -1.2))
    torch.testing.assert_close(dual, t(3.0, -1.2))  # only A<0 is capped at c * |A|


# ---- reductions ------------------------------------------------------------------------------------

# Sample A: ratios 1.0, 1.5 with A=+1 -> pg -1, -1.28 (second clipped)
# Sample B: ratio 0.5 with A=-1 -> pg 0.8 (clipped); its second token is masked out
LP = [ln(1.0, 1.5), ln(0.5, 7.0)]
OLD = [t(0, 0), t(0, 0)]
ADV = [t(1, 1), t(-1, -1)]
MASK = [t(1, 1), t(1, 0)]
CFG = LossConfig(eps_clip=0.2, eps_clip_high=0.28)


def run(config: LossConfig = CFG, **kw: object) -> LossOutput:
    args: dict = dict(logprobs=LP, old_logprobs=OLD, advantages=ADV, loss_masks=MASK)
    args.update(kw)
    normalizer = LossNormalizer.from_masks(args["loss_masks"], per_token=config.per_token)
    return policy_loss_sum(normalizer=normalizer, config=config, **args)


def test_per_sample_mean_averages_each_sample_then_the_samples() -> None:
    out = run()
    assert out.loss.item() == pytest.approx(((-1 - 1.28) / 2 + 0.8) / 2)
    assert merge_metrics([out])["clip_fraction"] == pytest.approx((1 / 2 + 1 / 1) / 2)
    assert merge_metrics([out])["ratio_max"] == pytest.approx(1.5)
    assert merge_metrics([out])["ratio_min"] == pytest.approx(0.5)


def test_per_token_mean_divides_the_token_sum_by_trained_tokens() -> None:
    out = run(replace(CFG, per_token=True))
    assert out.loss.item() == pytest.approx((-1 - 1.28 + 0.8) / 3)
    assert merge_metrics([out])["clip_fraction"] == pytest.approx(2 / 3)
    assert merge_metrics([out])["ppo_kl"] == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 3)


def test_gspo_uses_one_sequence_ratio_and_spreads_its_gradient() -> None:
    lp = [t(0.1, 0.3).requires_grad_()]
    cfg = replace(CFG, sequence_ratio=True)
    out = run(cfg, logprobs=lp, old_logprobs=[t(0, 0)], advantages=[t(1, 1)], loss_masks=[t(1, 1)])
    # s = exp(mean(0.1, 0.3)) = exp(0.2) < 1.28: unclipped; loss = -exp(0.2)
    assert out.loss.item() == pytest.approx(-math.exp(0.2))
    out.loss.backward()
    torch.testing.assert_close(lp[0].grad, t(-math.exp(0.2) / 2, -math.exp(0.2) / 2))


def test_gspo_clips_the_whole_sequence() -> None:
    cfg = replace(CFG, sequence_ratio=True)
    out = run(
        cfg,
        logprobs=[t(0.0, 1.0)],
        old_logprobs=[t(0, 0)],
        advantages=[t(1, 1)],
        loss_masks=[t(1, 1)],
    )
    assert out.loss.item() == pytest.approx(-1.28)  # exp(0.5) = 1.65 clipped to 1.28
    assert merge_metrics([out])["clip_fraction"] == pytest.approx(1.0)


def test_tis_weights_tokens_by_the_clipped_train_rollout_ratio() -> None:
    cfg = replace(CFG, per_token=True, use_tis=True, tis_clip=2.0, tis_clip_low=0.0)
    out = run(
        cfg,
        logprobs=[t(0, 0)],
        old_logprobs=[t(0, 0)],
        advantages=[t(1, 1)],
        loss_masks=[t(1, 1)],
        rollout_logprobs=[t(-1.0, 0.5)],
    )
    # weights exp(0 - rollout) = e, e^-0.5 -> clipped to 2, 0.6065; pg = -1 each
    w2 = math.exp(-0.5)
    assert out.loss.item() == pytest.approx(-(2 + w2) / 2)
    assert merge_metrics([out])["tis"] == pytest.approx((2 + w2) / 2)
    assert merge_metrics([out])["tis_clip_fraction"] == pytest.approx(0.5)
    assert merge_metrics([out])["logprob_diff"] == pytest.approx((1.0 + 0.5) / 2)


def test_tis_off_leaves_the_loss_alone_but_still_reports_the_mismatch() -> None:
    out = run(
        replace(CFG, per_token=True),
        logprobs=[t(0, 0)],
        old_logprobs=[t(0, 0)],
        advantages=[t(1, 1)],
        loss_masks=[t(1, 1)],
        rollout_logprobs=[t(-1.0, 0.5)],
    )
    assert out.loss.item() == pytest.approx(-1.0)
    assert "tis" not in merge_metrics([out])
    assert merge_metrics([out])["logprob_diff"] == pytest.approx(0.75)


def test_kl_and_entropy_terms_enter_with_their_coefficients() -> None:
    cfg = replace(
        CFG,
        per_token=True,
        use_kl_loss=True,
        kl_loss_coef=0.1,
        kl_loss_type="k1",
        entropy_coef=0.01,
    )
    kw = dict(
        logprobs=[t(-1.0, -2.0)],
        old_logprobs=[t(-1.0, -2.0)],
        advantages=[t(1, 1)],
        loss_masks=[t(1, 1)],
        ref_logprobs=[t(-1.5, -1.0)],
        entropies=[t(0.5, 1.5)],
    )
    out = run(cfg, **kw)
    # pg = -1 per token; k1 mean = (0.5 - 1) / 2 = -0.25; entropy mean = 1.0
    assert merge_metrics([out])["kl"] == pytest.approx(-0.25)
    assert merge_metrics([out])["entropy"] == pytest.approx(1.0)
    assert out.loss.item() == pytest.approx(-1.0 + 0.1 * -0.25 - 0.01 * 1.0)
    plain = run(replace(cfg, use_kl_loss=False, entropy_coef=0.0), **kw)
    assert plain.loss.item() == pytest.approx(-1.0)  # still logged, not trained on
    assert merge_metrics([plain])["kl"] == pytest.approx(-0.25)


def test_fully_masked_sample_adds_nothing_but_counts_as_a_sample() -> None:
    out = run(loss_masks=[t(1, 1), t(0, 0)])
    assert out.loss.item() == pytest.approx((-1 - 1.28) / 2 / 2)


def test_empty_step_gives_zero_loss_and_finite_gradients() -> None:
    lp = [t(-1.0, float("-inf")).requires_grad_()]
    for per_token in (False, True):
        out = run(
            replace(CFG, per_token=per_token),
            logprobs=lp,
            old_logprobs=[t(0, 0)],
            advantages=[t(1, 1)],
            loss_masks=[t(0, 0)],
            ref_logprobs=[t(0, 0)],
        )
        assert out.loss.item() == 0.0
        out.loss.backward()
        assert torch.isfinite(lp[0].grad).all()
        lp[0].grad = None


def test_empty_micro_batch_contributes_nothing() -> None:
    normalizer = LossNormalizer.from_masks(MASK, per_token=False)
    cfg = replace(CFG, sequence_ratio=True, use_tis=True)
    out = policy_loss_sum(
        logprobs=[],
        old_logprobs=[],
        advantages=[],
        loss_masks=[],
        normalizer=normalizer,
        config=cfg,
        rollout_logprobs=[],
        ref_logprobs=[],
        entropies=[],
    )
    assert out.loss.item() == 0.0
    metrics = merge_metrics([out])
    assert all(v == 0.0 for v in metrics.values())
    assert "ratio_max" not in metrics and "ratio_min" not in metrics


def test_masked_minus_inf_logprobs_do_not_poison_gradients() -> None:
    lp = [t(math.log(1.0), float("-inf")).requires_grad_()]
    cfg = replace(CFG, use_kl_loss=True, kl_loss_coef=0.1, kl_loss_type="low_var_kl")
    out = run(
        cfg,
        logprobs=lp,
        old_logprobs=[t(0, 0)],
        advantages=[t(1, 1)],
        loss_masks=[t(1, 0)],
        ref_logprobs=[t(0, 0)],
    )
    out.loss.backward()
    assert torch.isfinite(lp[0].grad).all() and lp[0].grad[1] == 0


def test_config_from_algorithm_dict() -> None:
    cfg = LossConfig.from_algorithm(
        {
            "eps_clip": 0.2,
            "eps_clip_high": None,
            "advantage_estimator": "gspo",
            "kl_loss_type": "low_var_kl",
            "calculate_per_token_loss": True,
        }
    )
    assert (cfg.eps_clip_high, cfg.sequence_ratio, cfg.per_token) == (0.2, True, True)
    with pytest.raises(ValueError, match="epsClipC"):
        LossConfig(eps_clip_c=0.9)


def test_grpo_loss_sum_adapter_equals_policy_loss_sum() -> None:
    algo = {"eps_clip": 0.2, "eps_clip_high": 0.28, "calculate_per_token_loss": False}
    norm = LossNormalizer.from_masks(MASK, per_token=False)
    loss, sums = grpo_loss_sum(
        logprobs=LP,
        old_logprobs=OLD,
        advantages=ADV,
        loss_masks=MASK,
        normalizer=norm,
        config=LossConfig.from_algorithm(algo),
        device="cpu",
    )
    assert loss.item() == pytest.approx(run().loss.item())
    assert {k: float(v) for k, v in sums.items()} == {
        k: v for k, v in merge_metrics([run()]).items() if k in sums
    }


# ---- logits -> entropy / logprobs ----------------------------------------------------------------


def test_entropy_and_logprobs_from_logits_match_hand_values() -> None:
    logits = torch.stack([t(0.0, 0.0), t(0.0, math.log(3.0))])  # probs (1/2, 1/2), (1/4, 3/4)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    torch.testing.assert_close(entropy_from_logits(logits), t(math.log(2.0), h))
    lp = logprobs_from_logits(logits, torch.tensor([0, 1]))
    torch.testing.assert_close(lp, t(math.log(0.5), math.log(0.75)))
    # temperature 2 halves the logits: p1 = sqrt(3) / (1 + sqrt(3))
    lp2 = logprobs_from_logits(logits[1:], torch.tensor([1]), temperature=2.0)
    torch.testing.assert_close(lp2, t(math.log(math.sqrt(3) / (1 + math.sqrt(3)))))


def test_chunked_entropy_and_logprobs_equal_unchunked_with_gradients() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(37, 19, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 19, (37,), generator=g)
    results = []
    for chunk in (None, 5, 16):
        logits = base.clone().requires_grad_()
        value = (
            entropy_from_logits(logits, chunk_size=chunk).sum()
            + logprobs_from_logits(logits, targets, chunk_size=chunk).sum()
        )
        value.backward()
        results.append((value.detach(), logits.grad))
    for value, grad in results[1:]:
        torch.testing.assert_close(value, results[0][0], rtol=1e-12, atol=0)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-12, atol=1e-15)


# ---- the key property: any packing gives the same loss and gradients ------------------------------


class TinyCausalLM(nn.Module):
    """One attention layer over a flat token row; attention stays inside each packed sequence."""

    def __init__(self, vocab: int = 13, dim: int = 8, max_pos: int = 32) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(max_pos, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, vocab)

    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, cu_seqlens: torch.Tensor
    ) -> torch.Tensor:
        n = input_ids.numel()
        seg = torch.repeat_interleave(
            torch.arange(cu_seqlens.numel() - 1, device=input_ids.device), cu_seqlens.diff().long()
        )  # (N,)
        h = self.tok(input_ids) + self.pos(position_ids)  # (N, D)
        q, k, v = self.qkv(h).chunk(3, dim=-1)  # (N, D) each
        idx = torch.arange(n, device=input_ids.device)
        allowed = (seg[:, None] == seg[None, :]) & (idx[:, None] >= idx[None, :])  # (N, N)
        scores = (q @ k.T / math.sqrt(q.shape[-1])).masked_fill(~allowed, float("-inf"))
        return self.out(h + scores.softmax(-1) @ v)  # (N, V)


def make_samples(seed: int, n: int = 12, group: int = 4) -> list[dict]:
    rng = random.Random(seed)
    samples = []
    rewards = torch.tensor([float(rng.random() < 0.5) for _ in range(n)])
    adv = group_advantages(rewards, group)  # (n,)
    for i in range(n):
        p, r = rng.randint(2, 5), rng.randint(1, 9)
        mask = [float(rng.random() < 0.8) for _ in range(r)]
        if i == 3:
            mask = [0.0] * r  # a sample with nothing to train on
        samples.append(
            {
                "tokens": [rng.randrange(13) for _ in range(p + r)],
                "prompt_len": p,
                "mask": torch.tensor(mask, dtype=torch.float64),
                # per-token advantages that vary inside a sample, as REINFORCE++ produces
                "adv": float(adv[i])
                + torch.tensor([rng.gauss(0, 0.3) for _ in range(r)], dtype=torch.float64),
                "noise": torch.tensor(
                    [[rng.gauss(0, 0.3) for _ in range(r)] for _ in range(3)], dtype=torch.float64
                ),
            }
        )
    return samples


def forward_micro_batch(model: TinyCausalLM, mb: list[dict]) -> tuple[list, list]:
    """Packed forward of one micro-batch -> per-sample response logprobs and entropies (R_i,)."""
    device = next(model.parameters()).device
    packed = pack_sequences([s["tokens"] for s in mb], pad_to_multiple=4)
    ids, cu = packed.input_ids.to(device), packed.cu_seqlens.to(device)
    logits = model(ids, packed.position_ids.to(device), cu)  # (N, V)
    logit_pos, target_pos = packed.response_index([s["prompt_len"] for s in mb])  # (M,), (M,)
    resp_logits = logits[logit_pos.to(device)]  # (M, V)
    lp = logprobs_from_logits(resp_logits, ids[target_pos.to(device)], chunk_size=7)  # (M,)
    ent = entropy_from_logits(resp_logits, chunk_size=7)  # (M,)
    sizes = [len(s["tokens"]) - s["prompt_len"] for s in mb]
    return list(lp.split(sizes)), list(ent.split(sizes))


def fill_old_policies(model: TinyCausalLM, samples: list[dict]) -> None:
    """old / rollout / ref logprobs = the current ones, shifted by fixed noise (off-policy data)."""
    with torch.no_grad():
        for s in samples:
            (lp,), _ = forward_micro_batch(model, [s])
            noise = s["noise"].to(lp.device)
            s["old"] = lp + 2 * noise[0]  # far enough off-policy to clip
            s["rollout"] = lp + noise[1]
            s["ref"] = lp + noise[2]


def step(
    model: TinyCausalLM, samples: list[dict], partition: list[list[int]], config: LossConfig
) -> tuple[float, dict[str, float], list[torch.Tensor]]:
    """Run one step's forward/backward over ``partition``; return loss, metrics and gradients."""
    model.zero_grad(set_to_none=True)
    normalizer = LossNormalizer.from_masks([s["mask"] for s in samples], per_token=config.per_token)
    outputs = []
    for group in partition:
        mb = [samples[i] for i in group]
        lps, ents = forward_micro_batch(model, mb)
        out = policy_loss_sum(
            logprobs=lps,
            old_logprobs=[s["old"] for s in mb],
            advantages=[s["adv"] for s in mb],
            loss_masks=[s["mask"] for s in mb],
            normalizer=normalizer,
            config=config,
            rollout_logprobs=[s["rollout"] for s in mb],
            ref_logprobs=[s["ref"] for s in mb],
            entropies=ents,
        )
        out.loss.backward()
        outputs.append(out)
    loss = sum(o.loss.item() for o in outputs)
    return loss, merge_metrics(outputs), [p.grad.clone() for p in model.parameters()]


def random_partition(n: int, rng: random.Random) -> list[list[int]]:
    order = list(range(n))
    rng.shuffle(order)
    cuts = sorted(rng.sample(range(1, n), rng.randint(1, n - 1)))
    return [order[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]


NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("per_token", [False, True], ids=["per_sample", "per_token"])
@pytest.mark.parametrize("gspo", [False, True], ids=["ppo_ratio", "gspo_ratio"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_CUDA)])
def test_loss_and_gradients_do_not_depend_on_packing(
    per_token: bool, gspo: bool, device: str
) -> None:
    torch.manual_seed(0)
    model = TinyCausalLM().double().to(device)
    samples = make_samples(seed=1)
    fill_old_policies(model, samples)
    config = LossConfig(
        eps_clip=0.2,
        eps_clip_high=0.28,
        eps_clip_c=3.0,
        sequence_ratio=gspo,
        use_kl_loss=True,
        kl_loss_coef=0.1,
        kl_loss_type="low_var_kl",
        entropy_coef=0.01,
        use_tis=True,
        tis_clip=2.0,
        per_token=per_token,
    )
    n = len(samples)
    ref_loss, ref_metrics, ref_grads = step(model, samples, [list(range(n))], config)

    rng = random.Random(2)
    lengths = [len(s["tokens"]) for s in samples]
    plan = plan_step(lengths, dp_size=2, max_tokens_per_gpu=12, balance_data=True)
    partitions = [
        [[i] for i in range(n)],  # one sample per micro-batch
        [
            list(mb) for rank in plan.ranks for mb in rank
        ],  # the packer's DP schedule, summed over ranks
        *(random_partition(n, rng) for _ in range(2)),
    ]
    assert ref_metrics["clip_fraction"] > 0 and ref_metrics["kl"] != 0  # the terms are exercised
    for partition in partitions:
        loss, metrics, grads = step(model, samples, partition, config)
        assert loss == pytest.approx(ref_loss, rel=1e-9)
        assert metrics.keys() == ref_metrics.keys()
        for key, value in metrics.items():
            assert value == pytest.approx(ref_metrics[key], rel=1e-9, abs=1e-12), key
        for g, ref_g in zip(grads, ref_grads, strict=True):
            torch.testing.assert_close(g, ref_g, rtol=1e-6, atol=1e-12)


def test_packed_forward_equals_one_sequence_at_a_time() -> None:
    torch.manual_seed(0)
    model = TinyCausalLM().double()
    samples = make_samples(seed=3, n=5)
    together, _ = forward_micro_batch(model, samples)
    for s, lp in zip(samples, together, strict=True):
        (alone,), _ = forward_micro_batch(model, [s])
        torch.testing.assert_close(lp, alone, rtol=1e-12, atol=1e-12)


def test_partial_normaliser_would_change_the_loss() -> None:
    """Guards the test above: normalising per micro-batch (the classic bug) is visibly wrong."""
    torch.manual_seed(0)
    model = TinyCausalLM().double()
    samples = make_samples(seed=1)
    fill_old_policies(model, samples)
    config = LossConfig(per_token=True)
    full, _, _ = step(model, samples, [list(range(len(samples)))], config)
    halves = [list(range(0, 6)), list(range(6, 12))]
    wrong = 0.0
    for half in halves:
        sub = [samples[i] for i in half]
        loss, _, _ = step(model, sub, [list(range(len(sub)))], config)
        wrong += loss / len(halves)
    assert wrong != pytest.approx(full, rel=1e-3)


@NO_CUDA
@pytest.mark.parametrize("gspo", [False, True], ids=["ppo_ratio", "gspo_ratio"])
def test_policy_loss_never_waits_for_the_gpu(gspo: bool) -> None:
    dev = torch.device("cuda")
    lp = [
        torch.randn(5, device=dev, requires_grad=True),
        torch.randn(3, device=dev, requires_grad=True),
    ]
    like = [x.detach() for x in lp]
    masks = [torch.ones(5, device=dev), torch.tensor([1.0, 0.0, 1.0], device=dev)]
    normalizer = LossNormalizer.from_masks(masks, per_token=False)
    cfg = LossConfig(
        sequence_ratio=gspo,
        use_tis=True,
        use_kl_loss=True,
        kl_loss_coef=0.1,
        entropy_coef=0.01,
        eps_clip_c=3.0,
    )
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = policy_loss_sum(
            logprobs=lp,
            old_logprobs=like,
            advantages=like,
            loss_masks=masks,
            normalizer=normalizer,
            config=cfg,
            rollout_logprobs=like,
            ref_logprobs=like,
            entropies=[x.abs() for x in lp],
        )
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert merge_metrics([out])["ratio_max"] >= merge_metrics([out])["ratio_min"]
