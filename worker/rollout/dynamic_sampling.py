"""Collect one rollout's prompt groups with DAPO-style dynamic sampling and partial rollout.

Waves of ``over_sampling_batch_size`` groups (buffered groups first, then fresh prompts) are generated
concurrently; each group is graded and filtered as soon as its last sample finishes. Once
``target_groups`` are kept, in-flight requests are aborted at the engines; aborted groups keep their
partial tokens in the buffer (``partial_rollout``), and groups that finish after the target is reached go
to the buffer too instead of being discarded. A new wave starts whenever the groups still in flight can no
longer reach the target.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kuberl.errors import EngineError
from kuberl.worker.rollout.filters import FilterResult, normalize_verdict
from kuberl.worker.rollout.generate import Endpoint, generate_sample
from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer
from kuberl.worker.rollout.sample import Sample, SampleStatus

log = logging.getLogger(__name__)

GroupSource = Callable[[int], list[list[Sample]]]  # n -> up to n fresh pending groups
Grader = Callable[[list[Sample]], Awaitable[None]]  # sets sample.reward on every sample
GroupFilter = Callable[..., Any]  # slime: fn(args, samples, **kwargs) -> bool | FilterResult


@dataclass
class CollectorSettings:
    target_groups: int  # rollout batch size (prompts)
    over_sampling_groups: int  # prompts per wave (>= target)
    max_new_tokens: int
    sampling_params: dict[str, Any]
    partial_rollout: bool = False
    mask_offpolicy: bool = False
    max_waves: int = 64  # a filter that drops everything must fail loudly, not spin forever
    max_failed_retries: int = 3


@dataclass
class RolloutResult:
    """The kept groups (exactly ``target_groups`` unless data ran out) and what happened on the way."""

    groups: list[list[Sample]]
    dropped: Counter = field(default_factory=Counter)  # reason -> groups
    waves: int = 0
    aborted_samples: int = 0
    tokens_wasted: int = 0  # generated then thrown away (aborts without partial rollout)
    resumed_samples: int = 0
    tokens_reused: int = 0  # partial tokens continued instead of regenerated
    late_groups_buffered: int = 0
    generated_tokens: int = 0
    grading_s: float = 0.0  # time spent grading groups (overlaps generation of other groups)
    wall_s: float = 0.0


async def collect_rollout(
    endpoint: Endpoint,
    rollout_id: int,
    settings: CollectorSettings,
    new_groups: GroupSource,
    grade: Grader,
    buffer: PartialRolloutBuffer,
    group_filter: GroupFilter | None = None,
    filter_args: Any = None,
    decode: Callable[[list[int]], str] | None = None,
) -> RolloutResult:
    """Return ``settings.target_groups`` graded, kept groups for ``rollout_id``."""
    t0 = time.perf_counter()
    result = RolloutResult(groups=[])
    kept: list[list[Sample]] = []
    running: dict[asyncio.Task, list[Sample]] = {}
    stopping = False

    def reused_tokens(group: list[Sample]) -> None:
        for s in group:
            if s.response_length and not s.status.is_finished:
                result.resumed_samples += 1
                result.tokens_reused += s.response_length

    async def run_group(group: list[Sample]) -> list[Sample]:
        before = sum(s.response_length for s in group)
        for attempt in range(settings.max_failed_retries + 1):
            await asyncio.gather(*(
                generate_sample(endpoint, s, settings.sampling_params, settings.max_new_tokens,
                                rollout_id=rollout_id, mask_offpolicy=settings.mask_offpolicy,
                                decode=decode)
                for s in group
            ))
            failed = [s for s in group if s.status == SampleStatus.FAILED]
            if not failed or stopping:
                break
            for s in failed:  # an engine went away: requeue on the remaining ones
                s.status = SampleStatus.PENDING
            log.warning("retrying %d samples after engine failure (attempt %d)", len(failed), attempt + 1)
        else:
            raise EngineError(
                f"samples of group {group[0].group_index} failed on every engine after "
                f"{settings.max_failed_retries} retries: {failed[0].metadata.get('error')}"
            )
        result.generated_tokens += sum(s.response_length for s in group) - before
        return group

    def launch_wave() -> int:
        wanted = settings.over_sampling_groups
        groups = buffer.take(wanted, rollout_id, filter_args)
        groups += new_groups(wanted - len(groups))
        for group in groups:
            reused_tokens(group)
            running[asyncio.ensure_future(run_group(group))] = group
        result.waves += 1
        return len(groups)

    async def verdict(group: list[Sample]) -> FilterResult:
        t = time.perf_counter()
        await grade(group)
        result.grading_s += time.perf_counter() - t
        if group_filter is None:
            return FilterResult(True)
        return normalize_verdict(group_filter(filter_args, group, rollout_id=rollout_id))

    if launch_wave() == 0:
        return result
    while running:
        done, _ = await asyncio.wait(
            running, return_when=asyncio.FIRST_COMPLETED, timeout=0.5 if stopping else None
        )
        if stopping and not done:
            # A request that reached the engine after the first abort runs on: abort until idle.
            await endpoint.abort(abort_all=True)
        for task in done:
            group = running.pop(task)
            task.result()  # re-raise engine errors
            if any(s.status == SampleStatus.ABORTED for s in group):
                _park_aborted(group, settings, buffer, result)
                continue
            decision = await verdict(group)
            if not decision.keep:
                result.dropped[decision.reason or "filtered"] += 1
            elif len(kept) < settings.target_groups:
                kept.append(group)
            else:  # finished after the target was reached: keep it for the next rollout
                buffer.put(group)
                result.late_groups_buffered += 1
        if len(kept) >= settings.target_groups and not stopping and running:
            stopping = True
            await endpoint.abort(abort_all=True)
        if not stopping and len(kept) + len(running) < settings.target_groups:
            if result.waves >= settings.max_waves:
                raise EngineError(
                    f"dynamic sampling kept {len(kept)}/{settings.target_groups} groups after "
                    f"{result.waves} waves (dropped: {dict(result.dropped)}); the filter "
                    "spec.rollout.dynamicSamplingFilterPath drops almost everything"
                )
            if launch_wave() == 0 and not running:
                break  # the data ran out
    result.groups = kept
    result.wall_s = time.perf_counter() - t0
    return result


def _park_aborted(group: list[Sample], settings: CollectorSettings, buffer: PartialRolloutBuffer,
                  result: RolloutResult) -> None:
    """An aborted group keeps its partial tokens in the buffer, or is reset when partial rollout is off."""
    aborted = [s for s in group if s.status == SampleStatus.ABORTED]
    result.aborted_samples += len(aborted)
    if settings.partial_rollout:
        for s in aborted:
            s.status = SampleStatus.PENDING  # resumable: prompt + partial response next time
        buffer.put(group)
        return
    result.tokens_wasted += sum(s.response_length for s in group)
    for s in group:  # regenerate from scratch: slime drops the partial work
        s.response_ids, s.response_logprobs, s.loss_mask, s.weight_versions = [], [], [], []
        s.response_text, s.status, s.reward = "", SampleStatus.PENDING, None
    buffer.put(group)
