"""Response-token logprobs and entropies straight from hidden states, in chunks.

The output layer runs on the positions that predict response tokens only (not the prompt's, not the
padding's), and at most ``CHUNK_ELEMENTS`` logits exist at once in fp32: each chunk's logits are
recomputed in backward (activation checkpointing), so the full-vocabulary fp32 logits of the micro-batch
are never materialised. The values equal ``log_softmax(lm_head(h) / T)`` of the full path.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 1 << 25  # logits per chunk: 128 MB in fp32


def chunk_tokens(vocab_size: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Pure: tokens per chunk so that one chunk holds at most ``elements`` logits."""
    return max(1, elements // max(1, vocab_size))


def _stats(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
           temperature: float) -> torch.Tensor:
    """(C, H) -> (2, C): logprob of each target and entropy, of softmax(lm_head(h) / T)."""
    logits = torch.nn.functional.linear(hidden, weight, bias)  # (C, V)
    if logits.dtype != torch.float64:
        logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    lse = torch.logsumexp(logits, dim=-1)  # (C,)
    logprob = logits.gather(-1, targets[:, None]).squeeze(-1) - lse
    entropy = lse - (logits.softmax(dim=-1) * logits).sum(-1)
    return torch.stack([logprob, entropy])


def token_logprobs(
    hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, *, temperature: float = 1.0,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (N, H) at the positions predicting ``targets`` (N,) -> (logprobs (N,), entropies (N,))."""
    n = hidden.shape[0]
    size = chunk or chunk_tokens(head.out_features)
    if n <= size:
        out = _stats(hidden, head.weight, head.bias, targets, temperature)
        return out[0], out[1]
    parts = []
    for start in range(0, n, size):
        h, t = hidden[start : start + size], targets[start : start + size]
        if torch.is_grad_enabled() and (h.requires_grad or head.weight.requires_grad):
            parts.append(checkpoint(_stats, h, head.weight, head.bias, t, temperature,
                                    use_reentrant=False))
        else:
            parts.append(_stats(h, head.weight, head.bias, t, temperature))
    out = torch.cat(parts, dim=1)
    return out[0], out[1]
