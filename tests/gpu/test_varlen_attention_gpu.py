"""PyTorch's flash varlen kernel, as the torch backend calls it, against the block-diagonal reference, and the
backend's train_step on one varlen row against right-padded rows (bf16 on CUDA; skipped without CUDA)."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch

from kuberl.worker.train import varlen_attention

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not (torch.cuda.is_available() and varlen_attention.available_on("cuda")), reason="needs CUDA")]


@pytest.mark.parametrize("scale", [128**-0.5, 0.05], ids=["default-scale", "other-scale"])
def test_flash_kernel_equals_block_diagonal_attention_with_grouped_heads(scale):
    torch.manual_seed(0)
    lengths = [300, 17, 1000, 1, 64]
    T, H, Hkv, D = sum(lengths), 12, 2, 128
    q = torch.randn(1, H, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, Hkv, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, Hkv, T, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    seg = varlen_attention.row_segments([list(range(len(lengths)))], lengths, T)
    got, _ = varlen_attention.varlen_attention_forward(None, q, k, v, None, scaling=scale,
                                                       **seg.kwargs("cuda"))
    ref_in = [t.detach().float().cpu().requires_grad_(True) for t in (q, k, v)]
    want, _ = varlen_attention.varlen_attention_forward(None, *ref_in, None, scaling=scale,
                                                        **seg.kwargs("cpu"))
    err = (got.float().cpu() - want).abs().max().item()
    print(f"flash varlen vs fp32 block-diagonal: max |out diff| {err:.2e}")
    assert err < 2e-2
    g = torch.randn_like(want)
    grads = torch.autograd.grad(got, (q, k, v), g.to("cuda", torch.bfloat16))
    grads_ref = torch.autograd.grad(want, ref_in, g)
    for name, a, b in zip("qkv", grads, grads_ref, strict=True):
        rel = ((a.float().cpu() - b).norm() / b.norm()).item()
        print(f"d{name}: relative error {rel:.2e}")
        assert rel < 2e-2, name


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory) -> Path:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=1024, hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)
    root = tmp_path_factory.mktemp("qwen-varlen")
    Qwen2ForCausalLM(cfg).save_pretrained(root)
    return root


def _samples():
    from kuberl.worker.train.batch import TrainSample

    rng = random.Random(0)
    out = []
    for n in [700, 90, 1500, 33, 400, 1200]:
        p = n // 3
        out.append(TrainSample(tokens=[rng.randrange(1024) for _ in range(n)], prompt_len=p,
                               advantages=[rng.uniform(-1, 1)] * (n - p), loss_mask=[1] * (n - p)))
    return out


def _run(model_dir: Path, attention: str, packed: bool):
    from kuberl.worker.algo.losses import LossConfig
    from kuberl.worker.levers import Levers
    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    opt = {"type": "sgd", "lr": 1e-3, "min_lr": 0.0, "lr_decay_style": "constant", "lr_warmup_iters": 0,
           "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8, "clip_grad": 0.0}
    tb = TorchBackend(TorchBackendConfig(hf_checkpoint=str(model_dir), loss=LossConfig(), optimizer=opt,
                                         device="cuda", dtype="bfloat16", use_dynamic_batch_size=True,
                                         max_tokens_per_gpu=4096, attention=attention))
    tb.levers = Levers(packed_sequences=packed)
    assert tb.varlen == (attention == "auto")
    lps = tb.compute_logprobs(_samples())
    metrics = tb.train_step(copy.deepcopy(_samples()))
    grad = torch.cat([p.grad.float().flatten() for p in tb.model.parameters() if p.grad is not None])
    return lps, metrics, grad


def test_backend_on_a_varlen_row_matches_padded_rows_in_bf16(qwen_dir):
    lp_v, m_v, g_v = _run(qwen_dir, "auto", packed=True)
    lp_p, m_p, g_p = _run(qwen_dir, "native", packed=False)
    diffs = torch.tensor([abs(a - b) for x, y in zip(lp_v, lp_p, strict=True) for a, b in zip(x, y, strict=True)])
    cos = torch.nn.functional.cosine_similarity(g_v, g_p, dim=0).item()
    print(f"logprobs |diff| mean {diffs.mean():.2e} max {diffs.max():.2e}; loss {m_v['train/loss']:.5f} vs "
          f"{m_p['train/loss']:.5f}; gradient cosine {cos:.5f}")
    assert diffs.mean() < 1e-2 and diffs.max() < 0.15
    assert abs(m_v["train/loss"] - m_p["train/loss"]) < 1e-2 * max(1.0, abs(m_p["train/loss"]))
    assert cos > 0.99
