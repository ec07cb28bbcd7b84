"""Per-parameter maps between Hugging Face tensors and Megatron tensor-parallel shards.

Every Megatron parameter (named as in megatron-core's *local* GPT layer spec) is described by a
``ParamMap``: the HF tensors it is built from and how (``kind``). Two pure functions do the work:

- ``megatron_shards(m, hf_tensors, shape, tp)`` -> the ``tp`` shards, shard r for tensor-parallel rank r;
- ``merge_to_hf(m, shards, shape)`` -> the HF tensors back, in ``m.hf`` order (exact inverse).

Layouts (Megatron's own conventions):
- fused QKV, GQA: rows grouped by query group, each group ``[q heads of the group; k; v]`` of ``head_dim``
  rows per head; the TP split takes whole groups, so it is a plain dim-0 chunk of the fused tensor;
- SwiGLU ``linear_fc1``: rank r holds ``[gate_r; up_r]`` (each of gate and up chunked over ranks), so the
  merged full tensor is NOT ``[gate; up]`` for TP > 1 and merging must go shard by shard;
- column-parallel (dim 0) / row-parallel (dim 1) / replicated (norms);
- vocabulary rows padded with zeros to ``padded_vocab_size`` then split on dim 0; merging drops the pad.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from kuberl.worker.train.hf_megatron.shape import ModelShape, padded_vocab_size

Kind = Literal["replicated", "column", "row", "qkv", "fc1", "vocab"]

# Names that Transformer Engine's layer spec fuses into the following linear layer.
_TE_RENAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


@dataclass(frozen=True)
class ParamMap:
    """One Megatron parameter (local-spec name) and the HF tensors it is made of."""

    megatron: str
    hf: tuple[str, ...]
    kind: Kind


def te_name(local_name: str) -> str:
    """Return the Transformer Engine spec's name for a local-spec parameter name."""
    for suffix, te in _TE_RENAMES.items():
        if local_name.endswith(suffix):
            return local_name[: -len(suffix)] + te
    return local_name


def param_maps(shape: ModelShape) -> list[ParamMap]:
    """Return the maps of every parameter of ``shape``'s model, in model order."""
    maps = [ParamMap("embedding.word_embeddings.weight", ("model.embed_tokens.weight",), "vocab")]
    for i in range(shape.num_layers):
        mg, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
        attn = hf + "self_attn."
        maps.append(ParamMap(mg + "input_layernorm.weight", (hf + "input_layernorm.weight",), "replicated"))
        maps.append(ParamMap(
            mg + "self_attention.linear_qkv.weight",
            (attn + "q_proj.weight", attn + "k_proj.weight", attn + "v_proj.weight"), "qkv",
        ))
        if shape.qkv_bias:
            maps.append(ParamMap(
                mg + "self_attention.linear_qkv.bias",
                (attn + "q_proj.bias", attn + "k_proj.bias", attn + "v_proj.bias"), "qkv",
            ))
        if shape.qk_layernorm:
            maps.append(ParamMap(mg + "self_attention.q_layernorm.weight", (attn + "q_norm.weight",), "replicated"))
            maps.append(ParamMap(mg + "self_attention.k_layernorm.weight", (attn + "k_norm.weight",), "replicated"))
        maps.append(ParamMap(mg + "self_attention.linear_proj.weight", (attn + "o_proj.weight",), "row"))
        if shape.sandwich_norms:
            maps.append(ParamMap(
                mg + "self_attention.post_self_attn_layernorm.weight",
                (hf + "post_self_attn_layernorm.weight",), "replicated",
            ))
        # In every family HF's "post_attention_layernorm" is the norm in front of the MLP.
        maps.append(ParamMap(mg + "pre_mlp_layernorm.weight", (hf + "post_attention_layernorm.weight",), "replicated"))
        if shape.family == "glm4":
            maps.append(ParamMap(mg + "mlp.linear_fc1.weight", (hf + "mlp.gate_up_proj.weight",), "fc1"))
        else:
            maps.append(ParamMap(
                mg + "mlp.linear_fc1.weight", (hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"), "fc1"
            ))
        maps.append(ParamMap(mg + "mlp.linear_fc2.weight", (hf + "mlp.down_proj.weight",), "row"))
        if shape.sandwich_norms:
            maps.append(ParamMap(
                mg + "mlp.post_mlp_layernorm.weight", (hf + "post_mlp_layernorm.weight",), "replicated"
            ))
    maps.append(ParamMap("decoder.final_layernorm.weight", ("model.norm.weight",), "replicated"))
    if not shape.tie_embeddings:
        maps.append(ParamMap("output_layer.weight", ("lm_head.weight",), "vocab"))
    return maps


# ---- tensor permutations ---------------------------------------------------------------------------


def fuse_qkv(q: Tensor, k: Tensor, v: Tensor, num_heads: int, num_groups: int) -> Tensor:
    """Return Megatron's fused QKV (weight (rows, H) or bias (rows,)) from HF's separate q, k, v."""
    head_dim = q.shape[0] // num_heads
    per_group = num_heads // num_groups
    rest = q.shape[1:]
    qg = q.reshape(num_groups, per_group * head_dim, *rest)
    kg = k.reshape(num_groups, head_dim, *rest)
    vg = v.reshape(num_groups, head_dim, *rest)
    return torch.cat([qg, kg, vg], dim=1).reshape(-1, *rest)


def split_qkv(qkv: Tensor, num_heads: int, num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Inverse of ``fuse_qkv``."""
    per_group = num_heads // num_groups
    head_dim = qkv.shape[0] // (num_groups * (per_group + 2))
    rest = qkv.shape[1:]
    grouped = qkv.reshape(num_groups, (per_group + 2) * head_dim, *rest)
    q, k, v = torch.split(grouped, [per_group * head_dim, head_dim, head_dim], dim=1)
    return (
        q.reshape(-1, *rest).contiguous(),
        k.reshape(-1, *rest).contiguous(),
        v.reshape(-1, *rest).contiguous(),
    )


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    if t.shape[0] == rows:
        return t
    pad = t.new_zeros(rows - t.shape[0], *t.shape[1:])
    return torch.cat([t, pad])


def megatron_shards(m: ParamMap, hf_tensors: Sequence[Tensor], shape: ModelShape, tp: int) -> list[Tensor]:
    """Return the ``tp`` Megatron shards of parameter ``m`` built from its HF tensors (``m.hf`` order)."""
    if len(hf_tensors) != len(m.hf):
        raise ValueError(f"{m.megatron} needs {len(m.hf)} HF tensors, got {len(hf_tensors)}")
    if m.kind == "replicated":
        return [hf_tensors[0].clone() for _ in range(tp)]
    if m.kind == "column":
        return [c.clone() for c in hf_tensors[0].chunk(tp, dim=0)]
    if m.kind == "row":
        return [c.clone() for c in hf_tensors[0].chunk(tp, dim=1)]
    if m.kind == "vocab":
        full = _pad_rows(hf_tensors[0], padded_vocab_size(shape.vocab_size, tp))
        return [c.clone() for c in full.chunk(tp, dim=0)]
    if m.kind == "qkv":
        q, k, v = hf_tensors
        fused = fuse_qkv(q, k, v, shape.num_attention_heads, shape.num_query_groups)
        return [c.clone() for c in fused.chunk(tp, dim=0)]
    if m.kind == "fc1":
        gate, up = hf_tensors[0].chunk(2, dim=0) if len(hf_tensors) == 1 else hf_tensors
        return [torch.cat([g, u]) for g, u in zip(gate.chunk(tp, 0), up.chunk(tp, 0), strict=True)]
    raise ValueError(f"unknown map kind {m.kind!r}")


def merge_to_hf(m: ParamMap, shards: Sequence[Tensor], shape: ModelShape) -> list[Tensor]:
    """Return the HF tensors (``m.hf`` order) from all ``tp`` shards of parameter ``m``."""
    tp = len(shards)
    if m.kind == "replicated":
        return [shards[0]]
    if m.kind == "column":
        return [torch.cat(list(shards), dim=0)]
    if m.kind == "row":
        return [torch.cat(list(shards), dim=1)]
    if m.kind == "vocab":
        return [torch.cat(list(shards), dim=0)[: shape.vocab_size]]
    if m.kind == "qkv":
        return list(split_qkv(torch.cat(list(shards), dim=0), shape.num_attention_heads, shape.num_query_groups))
    if m.kind == "fc1":
        halves = [s.chunk(2, dim=0) for s in shards]
        gate = torch.cat([h[0] for h in halves])
        up = torch.cat([h[1] for h in halves])
        return [torch.cat([gate, up])] if len(m.hf) == 1 else [gate, up]
    raise ValueError(f"unknown map kind {m.kind!r} (tp={tp})")


def partition_dim(m: ParamMap) -> int | None:
    """The dimension Megatron splits ``m`` on over TP ranks (None: replicated)."""
    return {"replicated": None, "row": 1}.get(m.kind, 0)
