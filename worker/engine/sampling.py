"""SGLang-compatible sampling parameters and the per-step token choice of the embedded engine.

Mirrors SGLang's semantics where the trainer depends on them: ``temperature == 0`` is greedy, and the
returned logprob is that of the chosen token under the temperature-scaled distribution *before*
top-k/top-p/min-p filtering (SGLang's default, and what slime's trainer reproduces by dividing its
logits by the rollout temperature).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_GREEDY_EPS = 1e-6


class SamplingParamsError(ValueError):
    """A sampling parameter is out of range; the engine answers 400 with this message."""


@dataclass
class SamplingParams:
    """The subset of SGLang's ``sampling_params`` the embedded engine honours (defaults as SGLang's)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    min_new_tokens: int = 0
    n: int = 1
    sampling_seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature < _GREEDY_EPS or self.top_k == 1

    @classmethod
    def from_json(cls, raw: dict[str, Any] | None) -> SamplingParams:
        """Parse and check a ``sampling_params`` object; unknown SGLang keys are accepted and ignored."""
        raw = dict(raw or {})
        p = cls()
        for name in (
            "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "ignore_eos",
            "skip_special_tokens", "no_stop_trim", "min_new_tokens", "n", "sampling_seed",
        ):
            if raw.get(name) is not None:
                setattr(p, name, raw[name])
        stop = raw.get("stop")
        p.stop = [stop] if isinstance(stop, str) else list(stop or [])
        p.stop_token_ids = [int(t) for t in raw.get("stop_token_ids") or []]
        p.check()
        return p

    def check(self) -> None:
        """Raise SamplingParamsError with SGLang-like wording for out-of-range values."""
        if self.temperature < 0.0:
            raise SamplingParamsError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise SamplingParamsError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise SamplingParamsError(f"min_p must be in [0, 1], got {self.min_p}.")
        if self.top_k < 1 and self.top_k != -1:
            raise SamplingParamsError(
                f"top_k must be -1 (disable), or at least 1, got {self.top_k}."
            )
        if self.max_new_tokens < 0:
            raise SamplingParamsError(
                f"max_new_tokens must be at least 0, got {self.max_new_tokens}."
            )
        if not 0 <= self.min_new_tokens <= max(self.max_new_tokens, 0):
            raise SamplingParamsError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}."
            )
        if self.n < 1:
            raise SamplingParamsError(f"n must be at least 1, got {self.n}.")


def choose_tokens(
    logits: torch.Tensor,
    params: list[SamplingParams],
    generators: list[torch.Generator | None],
    banned: list[list[int]] | None = None,
    generator: torch.Generator | None = None,
    original_logprobs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> (token ids (B,), their logprobs (B,)) with each row's own parameters.

    Rows with a generator of their own (``sampling_seed``) draw from it, so their samples do not
    depend on the batch; the others share ``generator`` in one batched draw. ``banned`` lists per
    row the token ids that may not be chosen yet (stop tokens before ``min_new_tokens``); they are
    removed from the choice only, not from the reported logprob. ``original_logprobs`` reports
    logprobs of the unscaled logits (SGLang's ``SGLANG_RETURN_ORIGINAL_LOGPROB``). No host sync inside.
    """
    # logits (B, V)
    logits = logits.float()
    device = logits.device
    temps = torch.tensor(
        [1.0 if p.greedy else p.temperature for p in params], dtype=logits.dtype, device=device
    )  # (B,)
    scaled = logits / temps[:, None]  # (B, V)
    logprobs_all = torch.log_softmax(logits if original_logprobs else scaled, dim=-1)  # (B, V)
    pick = scaled
    if banned and any(banned):
        rows = [i for i, b in enumerate(banned) for _ in b]
        cols = [t for b in banned for t in b]
        pick = scaled.clone()
        pick[rows, cols] = float("-inf")
    tokens = pick.argmax(dim=-1)  # (B,) final for greedy rows
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if sampled:
        idx = torch.tensor(sampled, device=device)
        probs = _filter(torch.softmax(pick.index_select(0, idx), dim=-1),
                        [params[i] for i in sampled])  # (S, V)
        draws = torch.empty(len(sampled), dtype=torch.long, device=device)  # (S,)
        shared = [k for k, i in enumerate(sampled) if generators[i] is None]
        if shared:
            rows_t = torch.tensor(shared, device=device)
            draws[rows_t] = torch.multinomial(probs.index_select(0, rows_t), 1,
                                              generator=generator).squeeze(1)
        for k, i in enumerate(sampled):
            if generators[i] is not None:
                draws[k] = torch.multinomial(probs[k], 1, generator=generators[i])[0]
        tokens[idx] = draws
    chosen = logprobs_all.gather(1, tokens[:, None]).squeeze(1)  # (B,)
    return tokens, chosen


def _filter(probs: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """probs (S, V) -> renormalised probs after each row's top-k, top-p and min-p."""
    V = probs.shape[-1]
    if all(p.top_k in (-1, 0) or p.top_k >= V for p in params) and all(
        p.top_p >= 1.0 and p.min_p <= 0.0 for p in params
    ):
        return probs
    device = probs.device
    top_k = torch.tensor([p.top_k if 0 < p.top_k < V else V for p in params], device=device)
    top_p = torch.tensor([p.top_p for p in params], device=device, dtype=probs.dtype)
    min_p = torch.tensor([p.min_p for p in params], device=device, dtype=probs.dtype)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)  # (S, V)
    ranks = torch.arange(V, device=device)[None, :]  # (1, V)
    drop = ranks >= top_k[:, None]
    drop |= (sorted_probs.cumsum(-1) - sorted_probs) > top_p[:, None]  # keep the prefix reaching p
    drop |= sorted_probs < min_p[:, None] * sorted_probs[:, :1]
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    probs = torch.zeros_like(probs).scatter(1, order, sorted_probs)
    return probs / probs.sum(-1, keepdim=True)
