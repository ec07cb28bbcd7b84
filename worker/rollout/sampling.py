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
    generators: list[torch.Generator],  # on the logits' device
    banned: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) -> (token ids (B,), their logprobs (B,)) with each row's own parameters.

    ``banned`` lists per row the token ids that may not be chosen yet (stop tokens before
    ``min_new_tokens``); they are removed from the sampling distribution only, not from the logprob.
    """
    B, _V = logits.shape
    logits = logits.float()
    temps = torch.tensor(
        [1.0 if p.greedy else p.temperature for p in params], dtype=logits.dtype,
        device=logits.device,
    )  # (B,)
    scaled = logits / temps[:, None]  # (B, V)
    logprobs_all = torch.log_softmax(scaled, dim=-1)  # (B, V)
    tokens = torch.empty(B, dtype=torch.long, device=logits.device)
    for i, p in enumerate(params):
        row = scaled[i]
        if banned and banned[i]:
            row = row.clone()
            row[banned[i]] = float("-inf")
        if p.greedy:
            tokens[i] = int(torch.argmax(row))
            continue
        probs = torch.softmax(row, dim=-1)  # (V,)
        probs = _filter(probs, p)
        tokens[i] = int(torch.multinomial(probs, 1, generator=generators[i]))
    chosen = logprobs_all.gather(1, tokens[:, None]).squeeze(1)  # (B,)
    return tokens, chosen


def _filter(probs: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """probs (V,) -> renormalised probs after top-k, top-p and min-p (SGLang's order)."""
    if p.top_k > 0 and p.top_k < probs.numel():
        kth = torch.topk(probs, p.top_k).values[-1]
        probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    if p.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=0)
        drop = (cumulative - sorted_probs) > p.top_p  # keep the smallest prefix reaching top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    if p.min_p > 0.0:
        probs = torch.where(probs >= p.min_p * probs.max(), probs, torch.zeros_like(probs))
    return probs / probs.sum()
