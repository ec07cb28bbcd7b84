"""The HF <-> Megatron maps: every permutation is the one Megatron's layers expect, and TP split/merge
round-trips exactly for every family and TP size."""

from __future__ import annotations

import pytest
import torch

from kuberl.errors import SpecError
from kuberl.worker.train.hf_megatron import (
    ModelShape,
    megatron_shards,
    merge_to_hf,
    param_maps,
    te_name,
)
from kuberl.worker.train.hf_megatron.maps import fuse_qkv, split_qkv
from kuberl.worker.train.hf_megatron.shape import padded_vocab_size


def shape(family: str, **kw) -> ModelShape:
    base = dict(
        family=family, num_layers=2, hidden_size=16, ffn_hidden_size=24, num_attention_heads=4,
        num_query_groups=2, head_dim=4, vocab_size=300, rotary_base=10000.0,
        qkv_bias=family in ("qwen2", "glm4"), qk_layernorm=family == "qwen3",
        sandwich_norms=family == "glm4",
    )
    base.update(kw)
    return ModelShape(**base)


def hf_shapes(s: ModelShape) -> dict[str, tuple[int, ...]]:
    """The HF tensor shapes of a model with shape ``s`` (as the transformers modules define them)."""
    h, hd, q, kv, f = s.hidden_size, s.head_dim, s.num_attention_heads, s.num_query_groups, s.ffn_hidden_size
    out = {"model.embed_tokens.weight": (s.vocab_size, h), "model.norm.weight": (h,)}
    if not s.tie_embeddings:
        out["lm_head.weight"] = (s.vocab_size, h)
    for i in range(s.num_layers):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                p + "self_attn.q_proj.weight": (q * hd, h), p + "self_attn.k_proj.weight": (kv * hd, h),
                p + "self_attn.v_proj.weight": (kv * hd, h), p + "self_attn.o_proj.weight": (h, q * hd),
                p + "mlp.down_proj.weight": (h, f)}
        if s.qkv_bias:
            out |= {p + "self_attn.q_proj.bias": (q * hd,), p + "self_attn.k_proj.bias": (kv * hd,),
                    p + "self_attn.v_proj.bias": (kv * hd,)}
        if s.qk_layernorm:
            out |= {p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,)}
        if s.family == "glm4":
            out |= {p + "mlp.gate_up_proj.weight": (2 * f, h), p + "post_self_attn_layernorm.weight": (h,),
                    p + "post_mlp_layernorm.weight": (h,)}
        else:
            out |= {p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h)}
    return out


def test_fused_qkv_puts_each_groups_query_heads_then_its_key_then_its_value() -> None:
    # 4 query heads in 2 groups, head_dim 1: rows are labelled by (kind, head) so the order is visible.
    q = torch.tensor([[10.0], [11.0], [12.0], [13.0]])  # q heads 0..3
    k = torch.tensor([[20.0], [21.0]])  # kv group 0, 1
    v = torch.tensor([[30.0], [31.0]])
    fused = fuse_qkv(q, k, v, num_heads=4, num_groups=2)
    assert fused.flatten().tolist() == [10, 11, 20, 30, 12, 13, 21, 31]
    # Biases (1-D) follow the same layout.
    assert fuse_qkv(q[:, 0], k[:, 0], v[:, 0], 4, 2).tolist() == [10, 11, 20, 30, 12, 13, 21, 31]


def test_split_qkv_inverts_fuse_qkv_with_head_dim_and_hidden() -> None:
    torch.manual_seed(0)
    q, k, v = torch.randn(8 * 3, 5), torch.randn(2 * 3, 5), torch.randn(2 * 3, 5)
    out = split_qkv(fuse_qkv(q, k, v, 8, 2), 8, 2)
    for a, b in zip(out, (q, k, v), strict=True):
        assert torch.equal(a, b)


def test_tp_shard_of_fused_qkv_holds_whole_query_groups() -> None:
    s = shape("llama", num_attention_heads=4, num_query_groups=2, head_dim=1, hidden_size=1)
    m = next(m for m in param_maps(s) if m.kind == "qkv")
    q, k, v = torch.tensor([[10.0], [11.0], [12.0], [13.0]]), torch.tensor([[20.0], [21.0]]), torch.tensor([[30.0], [31.0]])
    r0, r1 = megatron_shards(m, [q, k, v], s, tp=2)
    assert r0.flatten().tolist() == [10, 11, 20, 30]
    assert r1.flatten().tolist() == [12, 13, 21, 31]


def test_fc1_shard_is_gate_slice_then_up_slice_of_the_same_rank() -> None:
    s = shape("qwen2", ffn_hidden_size=4, hidden_size=1)
    m = next(m for m in param_maps(s) if m.kind == "fc1")
    gate, up = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[10.0], [11.0], [12.0], [13.0]])
    r0, r1 = megatron_shards(m, [gate, up], s, tp=2)
    assert r0.flatten().tolist() == [0, 1, 10, 11]
    assert r1.flatten().tolist() == [2, 3, 12, 13]
    # GLM4's fused gate_up_proj ([gate; up]) gives the same shards.
    g = shape("glm4", ffn_hidden_size=4, hidden_size=1)
    mg = next(m for m in param_maps(g) if m.kind == "fc1")
    assert mg.hf == ("model.layers.0.mlp.gate_up_proj.weight",)
    g0, g1 = megatron_shards(mg, [torch.cat([gate, up])], g, tp=2)
    assert torch.equal(g0, r0) and torch.equal(g1, r1)


def test_row_parallel_splits_columns_and_vocab_pads_then_splits_rows() -> None:
    s = shape("llama", vocab_size=300)
    maps = {m.megatron: m for m in param_maps(s)}
    o = torch.randn(16, 16)
    shards = megatron_shards(maps["decoder.layers.0.self_attention.linear_proj.weight"], [o], s, tp=2)
    assert [t.shape for t in shards] == [(16, 8), (16, 8)] and torch.equal(shards[1], o[:, 8:])
    emb = torch.randn(300, 16)
    parts = megatron_shards(maps["embedding.word_embeddings.weight"], [emb], s, tp=2)
    assert padded_vocab_size(300, 2) == 512
    assert [t.shape[0] for t in parts] == [256, 256]
    assert torch.equal(parts[0], emb[:256]) and torch.equal(parts[1][:44], emb[256:])
    assert not parts[1][44:].any()


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "glm4"])
@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("tied", [False, True])
def test_every_parameter_round_trips_through_tp_shards(family: str, tp: int, tied: bool) -> None:
    s = shape(family, num_attention_heads=8, num_query_groups=4, ffn_hidden_size=32, tie_embeddings=tied)
    wanted = hf_shapes(s)
    torch.manual_seed(1)
    hf = {name: torch.randn(dims) for name, dims in wanted.items()}
    maps = param_maps(s)
    covered = [n for m in maps for n in m.hf]
    assert sorted(covered) == sorted(wanted), "every HF tensor is mapped exactly once"
    for m in maps:
        shards = megatron_shards(m, [hf[n] for n in m.hf], s, tp)
        assert len(shards) == tp
        back = merge_to_hf(m, shards, s)
        for name, t in zip(m.hf, back, strict=True):
            assert torch.equal(t, hf[name]), (m.megatron, name)


def test_megatron_shard_shapes_match_megatron_parameter_shapes() -> None:
    s = shape("qwen2", num_attention_heads=8, num_query_groups=4, ffn_hidden_size=32)
    hf = {n: torch.randn(d) for n, d in hf_shapes(s).items()}
    tp, hd, h = 2, s.head_dim, s.hidden_size
    expected = {
        "decoder.layers.0.self_attention.linear_qkv.weight": ((8 + 2 * 4) * hd // tp, h),
        "decoder.layers.0.self_attention.linear_qkv.bias": ((8 + 2 * 4) * hd // tp,),
        "decoder.layers.0.self_attention.linear_proj.weight": (h, 8 * hd // tp),
        "decoder.layers.0.mlp.linear_fc1.weight": (2 * 32 // tp, h),
        "decoder.layers.0.mlp.linear_fc2.weight": (h, 32 // tp),
        "output_layer.weight": (512 // tp, h),
    }
    for m in param_maps(s):
        if m.megatron in expected:
            got = megatron_shards(m, [hf[n] for n in m.hf], s, tp)[1].shape
            assert tuple(got) == expected[m.megatron], m.megatron


def test_te_names_fuse_the_pre_linear_norms() -> None:
    assert te_name("decoder.layers.3.input_layernorm.weight") == "decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"
    assert te_name("decoder.layers.3.pre_mlp_layernorm.weight") == "decoder.layers.3.mlp.linear_fc1.layer_norm_weight"
    assert te_name("decoder.final_layernorm.weight") == "decoder.final_layernorm.weight"


def test_shape_from_transformers_configs_of_each_family() -> None:
    from transformers import Glm4Config, LlamaConfig, Qwen2Config, Qwen3Config

    common = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2)
    glm = ModelShape.from_hf_config(Glm4Config(**common, head_dim=16).to_dict())
    assert (glm.family, glm.rotary_percent, glm.rotary_interleaved, glm.sandwich_norms, glm.qkv_bias) == (
        "glm4", 0.5, True, True, True)
    q2 = ModelShape.from_hf_config(Qwen2Config(**common, rope_theta=1e6).to_dict())
    assert (q2.family, q2.qkv_bias, q2.qk_layernorm, q2.rotary_base, q2.head_dim) == ("qwen2", True, False, 1e6, 16)
    q3 = ModelShape.from_hf_config(Qwen3Config(**common, head_dim=32).to_dict())
    assert (q3.family, q3.qkv_bias, q3.qk_layernorm, q3.head_dim) == ("qwen3", False, True, 32)
    ll = ModelShape.from_hf_config(LlamaConfig(**common).to_dict())
    assert (ll.family, ll.qkv_bias, ll.rotary_percent, ll.rotary_interleaved) == ("llama", False, 1.0, False)


def test_shape_rejects_unknown_families_and_mismatched_presets() -> None:
    from kuberl.api.presets import PRESETS

    with pytest.raises(SpecError, match="model_type 'gpt2'"):
        ModelShape.from_hf_config({"model_type": "gpt2"})
    s = shape("llama")
    with pytest.raises(SpecError, match=r"spec\.model\.architecture does not match"):
        s.check_preset(PRESETS["llama3.1-8b"])
    with pytest.raises(SpecError, match="tensorModelParallelSize"):
        shape("llama", num_query_groups=2).check_tensor_parallel(4)
