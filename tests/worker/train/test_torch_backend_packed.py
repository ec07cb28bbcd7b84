"""Packed rows and response-only chunked logits in the torch backend give the padded, full-logits values:
logprobs, loss and gradients through the backend's own ``train_step`` (fp64, <= 1e-6)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch

from kuberl.worker.algo.losses import LossConfig
from kuberl.worker.levers import Levers
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.row_packing import plan_rows, row_tensors, row_width
from kuberl.worker.train.token_logprobs import chunk_tokens, token_logprobs
from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig, response_head

OPT = {"type": "sgd", "lr": 1e-3, "min_lr": 0.0, "lr_decay_style": "constant", "lr_warmup_iters": 0,
       "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8, "clip_grad": 0.0,
       "seed": 1}
TOKENS = [[5, 6, 7, 8, 9, 10], [5, 6, 7, 11], [5, 6, 7, 12, 13, 14, 15, 16], [5, 6, 7, 9, 9],
          [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30], [5, 40, 41]]
PROMPT_LENS = [3, 3, 3, 3, 5, 2]


def test_rows_pack_first_fit_decreasing_within_the_width():
    lengths = [6, 4, 8, 5, 11, 3]
    layout = plan_rows(lengths, 11)
    assert sorted(i for r in layout.rows for i in r) == list(range(6))
    assert all(sum(lengths[i] for i in r) <= 11 for r in layout.rows)
    assert len(layout.rows) == 4 and layout.width == 11  # 37 tokens in 4 rows instead of 6
    assert plan_rows([3, 3], 100).rows == [[0, 1]]
    assert plan_rows([30, 3], 10).rows == [[0], [1]]  # a longer sample gets a row of its own


def test_row_width_is_the_longest_sample_unless_attention_is_varlen():
    assert row_width([4, 9, 2], "sdpa", 15) == 9 and row_width([4, 9, 2], "eager", 15) == 9
    assert row_width([4, 9, 2], "flash_attention_2", 15) == 15


def test_positions_restart_for_every_sample_and_the_padding():
    layout = plan_rows([3, 2, 4], 5)
    ids, pos = row_tensors([[1, 2, 3], [4, 5], [6, 7, 8, 9]], layout)
    assert layout.rows == [[0, 1], [2]]
    assert ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 0]]
    assert pos.tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]


def test_chunked_logprobs_equal_the_full_log_softmax_with_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, dtype=torch.float64)
    hidden = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (13,))
    full = torch.log_softmax(head(hidden) / 0.7, -1)
    want_lp = full.gather(-1, targets[:, None]).squeeze(-1)
    want_ent = -(full.exp() * full).sum(-1)
    (g_want,) = torch.autograd.grad((want_lp * 2 + want_ent).sum(), hidden)
    lp, ent = token_logprobs(hidden, head, targets, temperature=0.7, chunk=4)
    (g_got,) = torch.autograd.grad((lp * 2 + ent).sum(), hidden)
    assert torch.allclose(lp, want_lp, atol=1e-12) and torch.allclose(ent, want_ent, atol=1e-12)
    assert torch.allclose(g_got, g_want, atol=1e-12)
    assert chunk_tokens(151_936) == 220 and chunk_tokens(1 << 26) == 1


@pytest.fixture(scope="module", params=["qwen2", "glm4"])
def model_dir(request, tmp_path_factory) -> Path:
    from kuberl.worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param, seed=3)


def _samples() -> list[TrainSample]:
    out = []
    for k, (toks, p) in enumerate(zip(TOKENS, PROMPT_LENS, strict=True)):
        r = len(toks) - p
        out.append(TrainSample(tokens=toks, prompt_len=p, advantages=[(-1.0) ** k * (1 + k / 4)] * r,
                               loss_mask=[1] * r, rollout_logprobs=[]))
    return out


def _run(model_dir: Path, levers: Levers, **kw) -> tuple[list[list[float]], dict[str, float],
                                                             list[torch.Tensor]]:
    trainer = TorchBackend(TorchBackendConfig(
        hf_checkpoint=str(model_dir), loss=LossConfig(eps_clip=0.2, eps_clip_high=0.28), optimizer=OPT,
        device="cpu", dtype="float64", temperature=0.9, **kw))
    trainer.levers = levers
    logprobs = trainer.compute_logprobs(_samples())
    metrics = trainer.train_step(copy.deepcopy(_samples()))
    grads = [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]
    return logprobs, metrics, grads


@pytest.mark.parametrize("packed,response_logits", list(itertools.product([True, False], repeat=2)))
def test_train_step_is_the_same_with_any_layout_and_micro_batching(model_dir, packed, response_logits):
    ref_lp, ref_m, ref_g = _run(model_dir, Levers(packed_sequences=False, response_logits=False),
                                micro_batch_size=1)
    levers = Levers(packed_sequences=packed, response_logits=response_logits)
    for kw in ({"micro_batch_size": 1}, {"micro_batch_size": 6},
               {"use_dynamic_batch_size": True, "max_tokens_per_gpu": 14}):
        lp, m, g = _run(model_dir, levers, **kw)
        for a, b in zip(lp, ref_lp, strict=True):
            assert a == pytest.approx(b, abs=1e-6)
        for key in ("train/loss", "train/pg_loss", "train/entropy"):
            assert m[key] == pytest.approx(ref_m[key], abs=1e-6), key
        assert len(g) == len(ref_g)
        for ga, gb in zip(g, ref_g, strict=True):
            assert torch.allclose(ga, gb, atol=1e-6)


def test_a_packed_row_really_holds_several_samples(model_dir):
    """The packed path is exercised, not silently the padded one: a packed row differs from what a
    plain causal mask over the row would give (the block mask is what keeps samples apart). Without
    ``use_cache=False`` transformers does not look for packing, so the backend always passes it."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64)
    layout = plan_rows([4, 4], 8)
    ids, pos = row_tensors([[5, 6, 7, 8], [9, 10, 11, 12]], layout)
    packed = model(input_ids=ids, position_ids=pos, use_cache=False).logits
    alone = model(input_ids=torch.tensor([[9, 10, 11, 12]]), use_cache=False).logits
    causal = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=pos,
                   use_cache=False).logits
    assert torch.allclose(packed[0, 4:], alone[0], atol=1e-9)
    assert not torch.allclose(causal[0, 4:], alone[0], atol=1e-6)
    assert response_head(model) is model.lm_head
