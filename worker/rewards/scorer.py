"""Score samples: pick each sample's grader, run it under a deadline, write ``sample.reward``.

Cheap pure-Python built-ins (``INLINE_BUILTINS``: linear-time string work on a bounded response) run
inline in the driver: a process round trip per sample cost more than the grading. The other built-ins
(sympy, math-verify) and sync custom graders run in the GradingPool's processes (timeout -> reward 0,
worker replaced); async custom graders and the remote grader run on the event loop under the same
deadline. Per-group custom graders (``groupRm``) get all samples of a group at once.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import httpx

from kuberl.worker.import_path import load_callable
from kuberl.worker.rewards import custom
from kuberl.worker.rewards.pool import GradingFailed, GradingPool, GradingTimeout
from kuberl.worker.rewards.registry import BUILTIN, Choice, choose, reward_value
from kuberl.worker.rewards.remote import grade_remote
from kuberl.worker.rollout.sample import Sample

log = logging.getLogger(__name__)

# Built-ins that cannot hang: linear-time string work on the response (f1: token counts; dapo: the
# last 300 characters). sympy- and math-verify-based graders stay in the pool.
INLINE_BUILTINS = frozenset({"f1", "dapo"})


def grades_inline(choice: Choice, enabled: bool = True) -> bool:
    """Pure: whether this sample's grader runs in the driver instead of a pool process."""
    return enabled and choice.kind == "builtin" and choice.target in INLINE_BUILTINS


def _builtin_function(name: str) -> Any:
    module, _, attr = BUILTIN[name].partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class RewardConfig:
    """The reward settings of ``spec.rollout`` (resolved)."""

    rm_type: str | None = None
    custom_rm_path: str | None = None
    rm_url: str | None = None
    group_rm: bool = False
    reward_key: str | None = None
    timeout_s: float = 10.0


class Scorer:
    """Grades samples in place. ``args`` is what custom functions receive as their first argument."""

    def __init__(self, config: RewardConfig, pool: GradingPool, args: Any = None,
                 client: httpx.AsyncClient | None = None, inline: bool = True) -> None:
        self.config, self.pool, self.args = config, pool, args
        self.inline = inline  # cheap built-ins in the driver (Levers.inline_grading)
        self.inline_graded = 0
        self._client = client
        self.timeouts = 0
        self.failures = 0

    async def score(self, samples: list[Sample]) -> list[float]:
        """Set and return ``reward`` for every sample (0.0 where grading timed out or failed)."""
        if self.config.group_rm:
            if not self.config.custom_rm_path:
                raise ValueError("groupRm needs customRmPath (a function over a list of samples)")
            groups: dict[int, list[Sample]] = defaultdict(list)
            for s in samples:
                groups[s.group_index].append(s)
            await asyncio.gather(*(self._score_group(g) for g in groups.values()))
        else:
            await asyncio.gather(*(self._score_one(s) for s in samples))
        return [float(s.reward or 0.0) for s in samples]

    async def _score_group(self, group: list[Sample]) -> None:
        fn = load_callable(self.config.custom_rm_path or "", custom.FIELD)
        result = custom.call(fn, self.args, group)
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, self.config.timeout_s * len(group))
        if len(result) != len(group):
            raise ValueError(f"{self.config.custom_rm_path} returned {len(result)} rewards for a "
                             f"group of {len(group)}")
        for s, r in zip(group, result, strict=True):
            s.reward = reward_value(r, self.config.reward_key)

    async def _score_one(self, sample: Sample) -> None:
        c = self.config
        choice = choose(sample.metadata, c.rm_type, c.custom_rm_path, c.rm_url)
        try:
            raw = await self._run(choice, sample)
            sample.reward = reward_value(raw, c.reward_key)
        except (GradingTimeout, TimeoutError):
            self.timeouts += 1
            sample.reward = 0.0
            sample.metadata["reward_timeout"] = True
        except GradingFailed as e:
            self.failures += 1
            sample.reward = 0.0
            sample.metadata["reward_error"] = str(e)
            log.warning("grading sample %d failed: %s", sample.index, e)

    async def _run(self, choice: Choice, sample: Sample) -> Any:
        timeout = self.config.timeout_s
        if grades_inline(choice, self.inline):
            self.inline_graded += 1
            try:
                return _builtin_function(choice.target)(sample.response_text, sample.label)
            except Exception as e:  # as the pool reports a grader's exception
                raise GradingFailed(f"{BUILTIN[choice.target]}: {type(e).__name__}: {e}") from e
        if choice.kind == "builtin":
            return await self.pool.run(BUILTIN[choice.target], sample.response_text, sample.label,
                                       timeout_s=timeout)
        if choice.kind == "remote":
            client = self._client or httpx.AsyncClient(timeout=timeout)
            try:
                return await grade_remote(choice.target, sample.prompt, sample.response_text,
                                          sample.label, client)
            finally:
                if client is not self._client:
                    await client.aclose()
        fn = load_callable(choice.target, custom.FIELD)
        if inspect.iscoroutinefunction(fn):
            return await asyncio.wait_for(custom.call(fn, self.args, sample), timeout)
        return await self.pool.run("kuberl.worker.rewards.custom:call_by_path", choice.target,
                                   self.args, sample, timeout_s=timeout)
