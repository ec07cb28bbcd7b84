"""What the trainer consumes: one sequence per sample, with the per-token training signals beside it."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainSample:
    """One prompt + response sequence. Per-token lists cover the response only (length R).

    ``rollout_logprobs`` come from the engine that generated the tokens; ``old_logprobs`` and
    ``ref_logprobs`` are filled by trainer forward passes before the update.
    """

    tokens: list[int]  # prompt + response, length P + R
    prompt_len: int
    advantages: list[float]  # (R,)
    loss_mask: list[int]  # (R,) 1 = trained on
    rollout_logprobs: list[float] = field(default_factory=list)  # (R,)
    old_logprobs: list[float] | None = None  # (R,)
    ref_logprobs: list[float] | None = None  # (R,)

    @property
    def response_len(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)
