"""Which grader scores a sample: built-in names, custom import paths, and their precedence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kuberl.errors import SpecError

# Built-in per-sample graders: name -> "module:function" taking (response_text, label) -> float.
BUILTIN: dict[str, str] = {
    "deepscaler": "kuberl.worker.rewards.deepscaler:grade",
    "math": "kuberl.worker.rewards.mathverify:grade",
    "dapo": "kuberl.worker.rewards.dapo:grade",
    "f1": "kuberl.worker.rewards.f1:grade",
}
REMOTE = "remote"
NAMES = (*BUILTIN, REMOTE)


@dataclass(frozen=True)
class Choice:
    """The grader for one sample: a built-in name, ``remote``, or a custom import path."""

    kind: str  # "builtin" | "remote" | "custom"
    target: str  # builtin name, rm url, or import path


def choose(metadata: dict[str, Any], rm_type: str | None, custom_rm_path: str | None,
           rm_url: str | None) -> Choice:
    """slime's precedence: sample custom_rm_path > customRmPath > sample rm_type > rmType."""
    path = metadata.get("custom_rm_path") or custom_rm_path
    if path:
        return Choice("custom", path)
    name = metadata.get("rm_type") or rm_type
    if name is None:
        raise SpecError(["spec.rollout.rmType: no grader configured; set rmType "
                         f"(one of {', '.join(NAMES)}) or customRmPath"])
    if name == REMOTE:
        if not rm_url:
            raise SpecError(["spec.rollout.rmUrl: rmType is remote but rmUrl is empty; set rmUrl"])
        return Choice("remote", rm_url)
    if name not in BUILTIN:
        raise SpecError([f"spec.rollout.rmType: unknown grader {name!r}; use one of {', '.join(NAMES)}"])
    return Choice("builtin", name)


def reward_value(raw: Any, reward_key: str | None) -> float:
    """A grader's result as a float; dict results are read at ``reward_key`` (slime: --reward-key)."""
    if isinstance(raw, dict):
        key = reward_key or ("score" if "score" in raw else None)
        if key is None or key not in raw:
            raise SpecError([f"spec.rollout.rewardKey: the grader returned keys {sorted(raw)}; set the "
                             "key that holds the reward"])
        return float(raw[key])
    return float(raw)
