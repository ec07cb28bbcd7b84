"""Speed levers that can be switched off one by one, to measure each (``bench/grpo_step_vs_trl.py``).

All are on by default and none changes what is trained (each has a test proving it gives the same
samples, rewards, logprobs or gradients as the path it replaces). ``KUBERL_DISABLE_LEVERS`` is a
comma-separated list of lever names to switch off; it is read by the driver and the trainer actors
(a local Ray passes the driver's environment to them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

ENV = "KUBERL_DISABLE_LEVERS"


@dataclass(frozen=True)
class Levers:
    batch_generate: bool = True  # one /generate per prompt group instead of one per sample
    inline_grading: bool = True  # cheap pure-Python graders run in the driver, not the pool
    packed_sequences: bool = True  # torch backend: one packed row per micro-batch, no padding
    response_logits: bool = True  # torch backend: lm_head on response positions only, in chunks
    varlen_attention: bool = True  # torch backend on CUDA: one packed row, flash attention per sample

    @classmethod
    def parse(cls, disabled: str | None) -> Levers:
        """``"a,b"`` -> Levers with a and b off. Raises ValueError naming the variable on a typo."""
        names = {f.name for f in fields(cls)}
        off = {n.strip().replace("-", "_") for n in (disabled or "").split(",") if n.strip()}
        unknown = sorted(off - names)
        if unknown:
            raise ValueError(f"{ENV}: unknown lever(s) {unknown}; known: {sorted(names)}")
        return cls(**{n: n not in off for n in names})

    @classmethod
    def from_env(cls) -> Levers:
        return cls.parse(os.environ.get(ENV))

    def disabled(self) -> list[str]:
        return [f.name for f in fields(self) if not getattr(self, f.name)]
