"""The running batch of the embedded engine: one left-padded KV cache shared by all running rows.

Continuous batching with a stock Hugging Face model: new requests are prefilled together, then merged
into the running batch by left-padding whichever side is shorter; finished rows are dropped by index.
Every row carries its own attention mask and position ids, so a row's logits do not depend on which
other rows share the batch (up to float rounding).
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.2x names the KV-cache argument ``cache``; older releases ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _pad_left(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """Left-pad ``t`` with zeros along ``dim`` by ``width`` columns."""
    if width == 0:
        return t
    shape = list(t.shape)
    shape[dim] = width
    return torch.cat([t.new_zeros(shape), t], dim=dim)


@torch.no_grad()
def prefill(
    model: torch.nn.Module, prompts: list[list[int]], device: torch.device, full_logits: bool
) -> tuple[torch.Tensor, DynamicCache, torch.Tensor]:
    """Run prompts through the model in one left-padded forward pass.

    Returns (logits (B, P, V) if ``full_logits`` else (B, 1, V), the filled cache, mask (B, P)).
    """
    P = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), P, dtype=torch.long)
    mask = torch.zeros(len(prompts), P, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, P - len(p):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, P)
    cache = DynamicCache()
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **{_cache_kwarg(model): cache},
        logits_to_keep=0 if full_logits else 1,
    )
    return out.logits, cache, mask.to(device)


class KVBatch:
    """KV cache (per layer (B, H, L, D)), mask (B, L), and per-row next token and position."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cache: DynamicCache | None = None
        self.mask = torch.zeros(0, 0, dtype=torch.long, device=device)  # (B, L)
        self.next_tokens = torch.zeros(0, dtype=torch.long, device=device)  # (B,) not yet fed
        self.positions = torch.zeros(0, dtype=torch.long, device=device)  # (B,) their position ids

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])

    def add(self, cache: DynamicCache, mask: torch.Tensor, next_tokens: torch.Tensor) -> None:
        """Append prefilled rows (cache and mask (b, P)) whose first sampled tokens are next_tokens (b,)."""
        positions = mask.sum(-1)  # (b,) the next token sits right after the prompt
        if self.cache is None or self.size == 0:
            self.cache, self.mask = cache, mask
            self.next_tokens, self.positions = next_tokens.to(self.device), positions
            return
        L, P = self.mask.shape[1], mask.shape[1]
        width = max(L, P)
        for old, new in zip(self.cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width - L, 2), _pad_left(new.keys, width - P, 2)])
            old.values = torch.cat(
                [_pad_left(old.values, width - L, 2), _pad_left(new.values, width - P, 2)]
            )
        self.mask = torch.cat([_pad_left(self.mask, width - L, 1), _pad_left(mask, width - P, 1)])
        self.next_tokens = torch.cat([self.next_tokens, next_tokens.to(self.device)])
        self.positions = torch.cat([self.positions, positions])

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order) and drop padding columns no row needs any more."""
        if self.cache is None:
            return
        if not rows:
            self.cache = None
            self.mask = self.mask[:0, :0]
            self.next_tokens, self.positions = self.next_tokens[:0], self.positions[:0]
            return
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        mask = self.mask.index_select(0, idx)
        used = mask.any(0).nonzero()
        first = int(used[0]) if used.numel() else 0
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, idx)[:, :, first:]
            layer.values = layer.values.index_select(0, idx)[:, :, first:]
        self.mask = mask[:, first:]
        self.next_tokens = self.next_tokens.index_select(0, idx)
        self.positions = self.positions.index_select(0, idx)

    @torch.no_grad()
    def decode(self, model: torch.nn.Module) -> torch.Tensor:
        """Feed each row's pending token; returns next-token logits (B, V)."""
        B = self.size
        self.mask = torch.cat([self.mask, self.mask.new_ones(B, 1)], dim=1)  # (B, L+1)
        out = model(
            input_ids=self.next_tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.positions[:, None],
            use_cache=True,
            **{_cache_kwarg(model): self.cache},
        )
        self.positions = self.positions + 1
        return out.logits[:, -1, :]
