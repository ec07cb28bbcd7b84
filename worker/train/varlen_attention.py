"""Variable-length attention for the torch backend's packed micro-batches, as a Hugging Face attention function.

With ``kuberl_varlen`` a micro-batch is one row of samples back to back and attention runs per sample from
``cu_seqlens``: on CUDA through PyTorch's own flash kernel (``torch.nn.attention.varlen``, no flash-attn
package to build), elsewhere through a block-diagonal reference (causal SDPA per sample). No mask of
width squared is ever built, and the row carries no padding. The backend passes the boundaries once per
micro-batch as transformers' flash-attention keyword arguments (``cu_seq_lens_q`` ...); without them they
are read from restarting ``position_ids``.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F

NAME = "kuberl_varlen"
HALF = (torch.bfloat16, torch.float16)  # what the flash kernel takes; other dtypes use the reference path


@dataclass(frozen=True)
class Segments:
    """Sequence boundaries over the flattened (rows x width) tokens of a micro-batch."""

    cu_seqlens: list[int]  # 0, end of segment 1, ..., rows * width
    max_len: int

    def kwargs(self, device: torch.device | str) -> dict[str, Any]:
        """transformers' FlashAttentionKwargs: travel from ``model(**inputs)`` to every attention call."""
        cu = torch.tensor(self.cu_seqlens, dtype=torch.int32, device=device)
        return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": self.max_len,
                "max_length_k": self.max_len}


def row_segments(rows: Sequence[Sequence[int]], lengths: Sequence[int], width: int) -> Segments:
    """Pure: the segments of a packed layout, each row's samples in order, then the row's padding (if any)
    as a segment of its own, so every token belongs to exactly one segment."""
    cu, at, longest = [0], 0, 0
    for members in rows:
        used = 0
        for i in members:
            at += lengths[i]
            used += lengths[i]
            longest = max(longest, lengths[i])
            cu.append(at)
        if used < width:
            at += width - used
            longest = max(longest, width - used)
            cu.append(at)
    return Segments(cu, longest)


def segments_from_positions(position_ids: torch.Tensor) -> Segments:
    """Segments of flattened rows whose positions restart at 0 for every sample (the packed layout)."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten().tolist()
    if not starts or starts[0] != 0:
        starts = [0, *starts]
    cu = [*starts, flat.numel()]
    return Segments(cu, max(b - a for a, b in pairwise(cu)))


@cache
def _flash_kernel() -> tuple[Any, frozenset[str]] | None:
    try:
        from torch.nn.attention import varlen
    except ImportError:
        return None
    fn = varlen.varlen_attn
    return fn, frozenset(inspect.signature(fn).parameters)


def available_on(device: torch.device | str) -> bool:
    """Whether the flash kernel can run here (a CUDA device and a torch that ships ``varlen_attn``)."""
    return torch.device(device).type == "cuda" and _flash_kernel() is not None


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg_cu: torch.Tensor, max_len: int,
           scale: float) -> torch.Tensor:
    """(T, H, D) through ``varlen_attn``; its keyword set changed between torch releases (2.10: is_causal;
    later: window_size, scale, enable_gqa), so read it off the signature."""
    kernel = _flash_kernel()
    assert kernel is not None
    fn, params = kernel
    kw: dict[str, Any] = {}
    if "window_size" in params:
        kw["window_size"] = (-1, 0)
    else:
        kw["is_causal"] = True
    if "scale" in params:
        kw["scale"] = scale
    else:
        q = q * (scale * math.sqrt(q.shape[-1]))  # the kernel's own scale is 1/sqrt(D)
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and "enable_gqa" in params:
        kw["enable_gqa"] = True
    else:
        k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    out = fn(q, k, v, seg_cu, seg_cu, max_len, max_len, **kw)
    return out[0] if isinstance(out, tuple) else out


def _block_diagonal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: Sequence[int],
                    scale: float) -> torch.Tensor:
    """(T, H, D) reference: causal attention within each segment, none across (CPU, tests)."""
    groups = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, groups), _repeat_kv(v, groups)
    parts = []
    for a, b in pairwise(cu):
        if b > a:
            qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))  # (H, n, D)
            parts.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scale).transpose(0, 1))
    return torch.cat(parts)


def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: q (B, Hq, S, D), k/v (B, Hkv, S, D) -> (B, S, Hq, D)."""
    if attention_mask is not None:
        raise ValueError(f"{NAME} reads sequence boundaries, not masks: pack rows with restarting position_ids")
    if sliding_window is not None:
        raise ValueError(f"{NAME} does not implement sliding-window layers; the backend uses sdpa for them")
    if dropout:
        raise ValueError(f"{NAME} has no attention dropout: set the model config's attention_dropout to 0")
    B, H, S, D = query.shape
    scale = scaling if scaling is not None else D**-0.5
    if kwargs.get("cu_seq_lens_q") is not None:
        seg_cu, max_len = kwargs["cu_seq_lens_q"], int(kwargs["max_length_q"])
    else:
        seg = segments_from_positions(kwargs["position_ids"])
        seg_cu, max_len = torch.tensor(seg.cu_seqlens, dtype=torch.int32, device=query.device), seg.max_len
    q, k, v = (t.transpose(1, 2).reshape(B * S, t.shape[1], D) for t in (query, key, value))
    if available_on(query.device) and query.dtype in HALF:
        out = _flash(q, k, v, seg_cu.to(query.device), max_len, scale)
    else:
        out = _block_diagonal(q, k, v, seg_cu.tolist(), scale)
    return out.reshape(B, S, H, D), None


def register() -> str:
    """Make ``attn_implementation="kuberl_varlen"`` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention_forward)
    return NAME


def use_varlen(model: torch.nn.Module) -> bool:
    """Switch a loaded model to varlen attention when every layer is full attention; returns whether it did
    (sliding-window layers keep the model's own implementation)."""
    config = model.config  # type: ignore[union-attr]
    types = getattr(config, "layer_types", None)
    if types:  # the per-layer truth where the model has it (Qwen2 keeps a sliding_window it does not use)
        if any(t != "full_attention" for t in types):
            return False
    elif getattr(config, "use_sliding_window", False) or getattr(config, "sliding_window", None):
        return False  # Mistral, Starcoder2, some Phi-3: one window for every layer
    register()
    setter = getattr(model, "set_attn_implementation", None)
    if callable(setter):
        setter(NAME)
    else:
        config._attn_implementation = NAME
    return getattr(config, "_attn_implementation", None) == NAME
