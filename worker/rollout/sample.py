"""``Sample``: one response to one prompt, as generated, graded and handed to the trainer.

The fields follow slime's Sample (slime-reference.md §5) where the trainer and the partial-rollout
buffer need them; per-token lists cover the response only and always have the same length R.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class SampleStatus(StrEnum):
    PENDING = "pending"  # not generated yet
    COMPLETED = "completed"  # stopped on EOS / stop token / stop string
    TRUNCATED = "truncated"  # hit max_new_tokens (or the context length)
    ABORTED = "aborted"  # stopped by an abort; the partial response can be resumed
    FAILED = "failed"  # the engine went away; requeue

    @property
    def is_finished(self) -> bool:
        return self in (SampleStatus.COMPLETED, SampleStatus.TRUNCATED)

    @classmethod
    def from_finish_type(cls, finish_type: str) -> SampleStatus:
        """SGLang ``finish_reason.type`` -> status."""
        return {"stop": cls.COMPLETED, "length": cls.TRUNCATED, "abort": cls.ABORTED}[finish_type]


@dataclass
class Sample:
    """A prompt and its (possibly partial) response with the signals training needs."""

    index: int  # unique within the run; rids derive from it
    group_index: int  # the prompt group (GRPO group) it belongs to
    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)  # (R,)
    response_logprobs: list[float] = field(default_factory=list)  # (R,) rollout policy
    loss_mask: list[int] = field(default_factory=list)  # (R,) 1 = trained on
    reward: float | None = None
    status: SampleStatus = SampleStatus.PENDING
    # spans {"version", "start", "end"} over response positions: which weights produced which tokens
    weight_versions: list[dict[str, Any]] = field(default_factory=list)
    label: Any = None
    prompt: Any = None  # the raw prompt (text or chat messages), for graders
    response_text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # start_rollout_id, rm_type, ...

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.response_ids

    @property
    def response_length(self) -> int:
        return len(self.response_ids)

    @property
    def effective_response_length(self) -> int:
        return sum(self.loss_mask)

    @property
    def versions(self) -> list[str]:
        """Distinct weight versions that produced this response, oldest first."""
        seen: list[str] = []
        for span in self.weight_versions:
            if span["version"] not in seen:
                seen.append(span["version"])
        return seen

    def append_response(
        self, ids: list[int], logprobs: list[float], version: str | None,
        spans: list[dict[str, Any]] | None = None, trainable: bool = True,
    ) -> None:
        """Append generated tokens; ``spans`` are relative to ``ids`` (engine weight_versions)."""
        if len(ids) != len(logprobs):
            raise ValueError(f"{len(ids)} tokens but {len(logprobs)} logprobs")
        start = len(self.response_ids)
        self.response_ids += ids
        self.response_logprobs += logprobs
        self.loss_mask += [1 if trainable else 0] * len(ids)
        if not ids:
            return
        for span in spans or [{"version": version, "start": 0, "end": len(ids)}]:
            self.weight_versions.append(
                {"version": span["version"], "start": start + span["start"], "end": start + span["end"]}
            )

    def mask_response(self) -> None:
        """Exclude everything generated so far from the loss (off-policy tokens of a resumed sample)."""
        self.loss_mask = [0] * len(self.response_ids)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        return cls(**{**d, "status": SampleStatus(d["status"])})
