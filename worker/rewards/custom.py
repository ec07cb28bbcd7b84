"""Custom reward functions given by import path (``rollout.customRmPath``).

slime's signature is kept: ``fn(args, sample)`` per sample, or ``fn(args, samples)`` per group with
``groupRm``; a function taking a single parameter gets just the sample(s). Sync or async; a dict
result is read with ``reward_key``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from kuberl.worker.import_path import load_callable

FIELD = "spec.rollout.customRmPath"


def arity(fn: Callable[..., Any]) -> int:
    """Number of positional parameters ``fn`` accepts (2 for slime-style ``(args, sample)``)."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(fn).parameters.values()):
        return 2
    return len(params)


def call(fn: Callable[..., Any], args: Any, subject: Any) -> Any:
    """Call with ``(args, subject)`` or ``(subject)`` depending on the function's signature."""
    return fn(args, subject) if arity(fn) >= 2 else fn(subject)


def call_by_path(path: str, args: Any, subject: Any) -> Any:
    """Entry point for grading-pool children: load the function there and call it."""
    return call(load_callable(path, FIELD), args, subject)

