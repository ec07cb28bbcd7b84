"""Variable-length attention over packed rows: segment maths, the attention function's contract, and the torch
backend's ``train_step`` through it giving the padded values (fp64, CPU block-diagonal path; the CUDA flash
kernel is compared in tests/gpu/test_varlen_attention_gpu.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kuberl.worker.levers import Levers
from kuberl.worker.train import varlen_attention
from kuberl.worker.train.varlen_attention import Segments, row_segments, segments_from_positions

from .test_torch_backend_packed import _run, _samples, model_dir  # noqa: F401  (fixture)


def test_row_segments_cover_every_token_with_each_rows_padding_a_segment_of_its_own():
    assert row_segments([[0, 1, 2]], [3, 2, 4], 9) == Segments([0, 3, 5, 9], 4)
    # two rows of width 6: [0 (4), 2 (1)] + 1 pad, [1 (5)] + 1 pad
    assert row_segments([[0, 2], [1]], [4, 5, 1], 6) == Segments([0, 4, 5, 6, 11, 12], 5)
    assert row_segments([], [], 0) == Segments([0], 0)


def test_segments_from_restarting_positions_match_the_layout():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 0]])
    assert segments_from_positions(pos) == Segments([0, 3, 5, 6, 11, 12], 5)
    assert segments_from_positions(torch.tensor([[0, 1, 2, 3]])) == Segments([0, 4], 4)


def _reference(q, k, v, lengths):
    """Each sample alone through plain causal SDPA (GQA by repeating heads)."""
    groups = q.shape[1] // k.shape[1]
    out, at = [], 0
    for n in lengths:
        qs, ks, vs = q[:, :, at : at + n], k[:, :, at : at + n], v[:, :, at : at + n]
        ks, vs = ks.repeat_interleave(groups, 1), vs.repeat_interleave(groups, 1)
        out.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=0.3).transpose(1, 2))
        at += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("how", ["kwargs", "positions"])
def test_attention_function_attends_within_samples_only_with_grouped_heads(how):
    torch.manual_seed(0)
    lengths = [5, 1, 7]
    q = torch.randn(1, 4, 13, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 13, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 13, 8, dtype=torch.float64, requires_grad=True)
    seg = row_segments([[0, 1, 2]], lengths, 13)
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    kw = seg.kwargs("cpu") if how == "kwargs" else {"position_ids": pos}
    got, weights = varlen_attention.varlen_attention_forward(None, q, k, v, None, scaling=0.3, **kw)
    want = _reference(q, k, v, lengths)
    assert weights is None and got.shape == (1, 13, 4, 8)
    assert torch.allclose(got, want, atol=1e-12)
    g_got = torch.autograd.grad(got.square().sum(), (q, k, v))
    g_want = torch.autograd.grad(want.square().sum(), (q, k, v))
    for a, b in zip(g_got, g_want, strict=True):
        assert torch.allclose(a, b, atol=1e-12)


def test_attention_function_refuses_masks_and_sliding_windows_with_the_reason():
    q = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ValueError, match="restarting position_ids"):
        varlen_attention.varlen_attention_forward(None, q, q, q, torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match="sliding-window"):
        varlen_attention.varlen_attention_forward(None, q, q, q, None, sliding_window=2)


def test_train_step_through_varlen_attention_gives_the_padded_values(model_dir, monkeypatch):  # noqa: F811
    """The backend's own compute_logprobs and train_step on one varlen row equal the padded, full-logits
    run (fp64, <= 1e-6), and every attention call received the boundaries the backend computed."""
    calls: list[bool] = []
    inner = varlen_attention.varlen_attention_forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q") is not None)
        return inner(*args, **kwargs)

    monkeypatch.setattr(varlen_attention, "varlen_attention_forward", spy)
    ref_lp, ref_m, ref_g = _run(model_dir, Levers(packed_sequences=False, response_logits=False),
                                micro_batch_size=1)
    assert not calls
    for kw in ({"micro_batch_size": 6}, {"use_dynamic_batch_size": True, "max_tokens_per_gpu": 14}):
        lp, m, g = _run(model_dir, Levers(), attention="varlen", **kw)
        for a, b in zip(lp, ref_lp, strict=True):
            assert a == pytest.approx(b, abs=1e-6)
        for key in ("train/loss", "train/pg_loss", "train/entropy"):
            assert m[key] == pytest.approx(ref_m[key], abs=1e-6), key
        for ga, gb in zip(g, ref_g, strict=True):
            assert torch.allclose(ga, gb, atol=1e-6)
    assert calls and all(calls)


def test_auto_keeps_the_models_attention_off_cuda_and_varlen_refuses_padded_rows(model_dir):  # noqa: F811
    from kuberl.worker.algo.losses import LossConfig
    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    from .test_torch_backend_packed import OPT

    def backend(**kw):
        return TorchBackend(TorchBackendConfig(hf_checkpoint=str(model_dir), loss=LossConfig(), optimizer=OPT,
                                               device="cpu", dtype="float64", **kw))

    auto = backend()
    assert not auto.varlen and auto.model.config._attn_implementation != varlen_attention.NAME
    forced = backend(attention="varlen")
    assert forced.varlen and forced.model.config._attn_implementation == varlen_attention.NAME
    forced.levers = Levers(packed_sequences=False)
    with pytest.raises(RuntimeError, match="packed rows"):
        forced.compute_logprobs(copy.deepcopy(_samples()))
    with pytest.raises(ValueError, match="attention='flash'"):
        backend(attention="flash")


def test_forcing_varlen_on_a_sliding_window_model_is_refused(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    from kuberl.worker.algo.losses import LossConfig
    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    from .test_torch_backend_packed import OPT

    MistralForCausalLM(MistralConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                     num_attention_heads=4, num_key_value_heads=2, sliding_window=16)
                       ).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="sliding-window"):
        TorchBackend(TorchBackendConfig(hf_checkpoint=str(tmp_path), loss=LossConfig(), optimizer=OPT,
                                        device="cpu", attention="varlen"))


def test_models_with_sliding_window_layers_keep_their_own_attention():
    """Mistral-style configs (one window for every layer, no layer_types) and sliding layers decline varlen;
    Qwen2 keeps an unused sliding_window beside all-full layer_types and takes it."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2)
    assert not varlen_attention.use_varlen(MistralForCausalLM(MistralConfig(**small, sliding_window=16)))
    assert varlen_attention.use_varlen(Qwen2ForCausalLM(Qwen2Config(**small, sliding_window=32768)))
    sliding = Qwen2Config(**small, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    assert "sliding_attention" in sliding.layer_types
    assert not varlen_attention.use_varlen(Qwen2ForCausalLM(sliding))
