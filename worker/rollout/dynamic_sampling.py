"""Collect one rollout's prompt groups with DAPO-style dynamic sampling and partial rollout.

Waves of ``over_sampling_batch_size`` groups (buffered groups first, then fresh prompts) are generated
concurrently; each group is graded and filtered as soon as its last sample finishes. Once
``target_groups`` are kept, every request still in flight is aborted: with ``exclusive_engines`` (the
driver's training rollout, whose engines serve nothing else) first by one ``abort_all`` per engine, as slime
does; otherwise, and in every later round, by its exact rid (real SGLang 0.5.14 matches exact rids only and
drops an abort that beats the request to the server, so the aborts are re-sent every ``abort_interval_s``
until each request has come back). Aborted groups keep their partial tokens in the buffer with
``partial_rollout``; groups that finish after the target is reached are buffered with ``partial_rollout``
and dropped without it, as slime does. Tokens generated under older weights are masked, or left for
TIS to importance-correct (:func:`stale_token_handling`). A new wave starts whenever the groups still in
flight can no longer reach the target.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kuberl.errors import EngineError, SpecError
from kuberl.worker.rollout.engine_client import GenerateOutput
from kuberl.worker.rollout.filters import FilterResult, normalize_verdict
from kuberl.worker.rollout.generate import Endpoint, generate_batch, generate_sample
from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer
from kuberl.worker.rollout.sample import Sample, SampleStatus

log = logging.getLogger(__name__)

GroupSource = Callable[[int], list[list[Sample]]]  # n -> up to n fresh pending groups
Grader = Callable[[list[Sample]], Awaitable[None]]  # sets sample.reward on every sample
GroupFilter = Callable[..., Any]  # slime: fn(args, samples, **kwargs) -> bool | FilterResult
# slime: async fn(args, sample, sampling_params[, evaluation]) -> Sample; kuberl also passes
# endpoint=, rollout_id= and max_context_len= to a hook that accepts them (or **kwargs).
CustomGenerate = Callable[..., Awaitable[Any]]
NOT_SENT = "not sent: the rollout reached its target"


@dataclass
class CollectorSettings:
    target_groups: int  # rollout batch size (prompts)
    over_sampling_groups: int  # prompts per wave (>= target)
    max_new_tokens: int
    sampling_params: dict[str, Any]
    partial_rollout: bool = False
    mask_offpolicy: bool = False  # spec.rollout.maskOffpolicyInPartialRollout
    use_tis: bool = False  # spec.algorithm.useTis: stale tokens may stay, importance-corrected
    policy_version: str | None = None  # the weight version engines serve now; None: the newest seen
    max_context_len: int | None = None  # spec.rollout.maxContextLen (prompt + response)
    server_concurrency: int | None = None  # spec.sglang.serverConcurrency: /generate per engine
    custom_generate: CustomGenerate | None = None  # spec.rollout.customGenerateFunctionPath
    evaluation: bool = False
    # One /generate per group (SGLang's batch form) where the endpoint can send batches and no
    # customGenerateFunctionPath replaces generation; off: one request per sample.
    batch_groups: bool = True
    max_waves: int = 64  # a filter that drops everything must fail loudly, not spin forever
    max_failed_retries: int = 3
    abort_interval_s: float = 0.2  # re-send aborts this often until every request came back
    # The engines serve this collection alone (the driver's training rollout): the first abort round is one
    # abort_all per engine, as slime does, instead of one request per rid (hundreds, which let the engine
    # finish most responses before the aborts arrived); later rounds re-send exact rids for requests the
    # engine had not registered yet. Off: exact rids only (hooks and shared engines).
    exclusive_engines: bool = False
    abort_timeout_s: float = 300.0  # then give up loudly

    def __post_init__(self) -> None:
        p = self.sampling_params
        if p.get("ignore_eos") and p.get("stop_token_ids"):
            raise SpecError([
                "spec.rollout.stopTokenIds: SGLang 0.5.14 ignores stop_token_ids when ignore_eos is "
                "true, so these stop tokens would never stop a response; drop ignore_eos or the "
                "stop tokens"
            ])


@dataclass
class RolloutResult:
    """The kept groups (exactly ``target_groups`` unless data ran out) and what happened on the way."""

    groups: list[list[Sample]]
    dropped: Counter = field(default_factory=Counter)  # reason -> groups
    waves: int = 0
    aborted_samples: int = 0
    abort_rounds: int = 0  # /abort_request rounds sent (each to every rid still in flight)
    tokens_wasted: int = 0  # generated then thrown away (aborts without partial rollout)
    resumed_samples: int = 0
    tokens_reused: int = 0  # partial tokens continued instead of regenerated
    late_groups_buffered: int = 0  # finished after the target, kept for later (partial rollout)
    late_groups_dropped: int = 0  # finished after the target, thrown away (no partial rollout)
    over_context_samples: int = 0  # prompts with no room left under the context length
    stale_tokens: int = 0  # response tokens of kept samples made by older weights
    response_tokens: int = 0  # response tokens of kept samples
    generated_tokens: int = 0
    peak_in_flight: int = 0  # most /generate calls in flight at once (bounded by serverConcurrency)
    grading_s: float = 0.0  # time spent grading groups (overlaps generation of other groups)
    wall_s: float = 0.0

    def extra_metrics(self) -> dict[str, float]:
        """Stale-data and context metrics (worker/metrics.py table) of this rollout."""
        return {
            "rollout/late_groups_dropped": float(self.late_groups_dropped),
            "buffer/late_groups_buffered": float(self.late_groups_buffered),
            "rollout/offpolicy_token_fraction": (
                self.stale_tokens / self.response_tokens if self.response_tokens else 0.0),
            "rollout/over_context_samples": float(self.over_context_samples),
        }


def stale_token_handling(mask_offpolicy: bool, use_tis: bool) -> Literal["mask", "tis"]:
    """How tokens from older weights are trained: masked out, or kept for TIS to re-weight.

    ``maskOffpolicyInPartialRollout`` masks; otherwise ``useTis`` importance-corrects them in the
    loss (weight ``min(pi_old / pi_rollout, tisClip)``). With neither, nothing would correct them,
    so they are masked.
    """
    return "tis" if use_tis and not mask_offpolicy else "mask"


def mark_stale(samples: list[Sample], policy_version: str, mask: bool) -> tuple[int, int]:
    """Find response tokens not made by ``policy_version`` (from their weight-version spans); zero
    their loss mask when ``mask``. Returns (stale tokens, response tokens)."""
    stale = total = 0
    for s in samples:
        total += s.response_length
        for span in s.weight_versions:
            if span["version"] == policy_version:
                continue
            stale += span["end"] - span["start"]
            if mask:
                s.loss_mask[span["start"]:span["end"]] = [0] * (span["end"] - span["start"])
    return stale, total


class TrackedEndpoint:
    """The collector's view of an endpoint: it knows every rid it sent that has not come back,
    bounds concurrent ``/generate`` calls, and once stopped answers queued calls with an abort
    instead of sending them. User generate hooks get this object, so their requests are aborted too."""

    def __init__(self, endpoint: Endpoint, max_in_flight: int | None, rid_prefix: str) -> None:
        self.endpoint = endpoint
        self.in_flight: Counter[str] = Counter()
        self.stopped = False
        self.latest_version: str | None = None
        self.peak_in_flight = 0
        self._slots = asyncio.Semaphore(max_in_flight) if max_in_flight else None
        self._batch_slots = asyncio.Lock()
        self.rid_prefix = rid_prefix
        self._auto = 0

    async def generate(
        self, input_ids: list[int], sampling_params: dict[str, Any], rid: str | None = None,
        return_logprob: bool = True, logprob_start_len: int | None = None,
    ) -> GenerateOutput:
        if rid is None:  # a hook that names no rid still gets one we can abort
            self._auto += 1
            rid = f"{self.rid_prefix}-auto-{self._auto:012d}"
        if self._slots is not None:
            await self._slots.acquire()
        try:
            if self.stopped:
                return GenerateOutput(rid, [], [], {"type": "abort", "message": NOT_SENT}, None)
            self.in_flight[rid] += 1
            self.peak_in_flight = max(self.peak_in_flight, sum(self.in_flight.values()))
            try:
                out = await self.endpoint.generate(input_ids, sampling_params, rid, return_logprob,
                                                   logprob_start_len)
            finally:
                self.in_flight[rid] -= 1
                if self.in_flight[rid] <= 0:
                    del self.in_flight[rid]
        finally:
            if self._slots is not None:
                self._slots.release()
        if out.weight_version is not None:
            self.latest_version = out.weight_version
        return out

    @property
    def sends_batches(self) -> bool:
        return bool(getattr(self.endpoint, "sends_batches", False))

    async def generate_batch(
        self, input_ids: list[list[int]], sampling_params: list[dict[str, Any]], rids: list[str],
        return_logprob: bool = True,
    ) -> list[GenerateOutput]:
        """One batched ``/generate``; it takes one concurrency slot per item (slots are taken under a
        lock, so two batches never each hold half of what both need) and tracks every rid."""
        if self._slots is not None:
            async with self._batch_slots:
                for _ in rids:
                    await self._slots.acquire()
        try:
            if self.stopped:
                return [GenerateOutput(rid, [], [], {"type": "abort", "message": NOT_SENT}, None)
                        for rid in rids]
            self.in_flight.update(rids)
            self.peak_in_flight = max(self.peak_in_flight, sum(self.in_flight.values()))
            try:
                outs = await self.endpoint.generate_batch(input_ids, sampling_params, rids,
                                                          return_logprob)
            finally:
                self.in_flight.subtract(rids)
                for rid in rids:
                    if self.in_flight[rid] <= 0:
                        del self.in_flight[rid]
        finally:
            if self._slots is not None:
                for _ in rids:
                    self._slots.release()
        for out in outs:
            if out.weight_version is not None:
                self.latest_version = out.weight_version
        return outs

    async def abort(self, rid: str | None = None, abort_all: bool = False) -> None:
        """Hooks may abort their own rids; never everything (other users share the engines)."""
        if rid:
            await self.endpoint.abort(rid)

    async def abort_in_flight(self, everything: bool = False) -> int:
        """One abort per rid still in flight, each to its engine; or, with ``everything``, one abort_all per
        engine. Returns how many requests were in flight."""
        rids = list(self.in_flight)
        if everything and rids:
            await self.endpoint.abort(abort_all=True)
        else:
            await asyncio.gather(*(self.endpoint.abort(rid) for rid in rids))
        return len(rids)


def _engine_count(endpoint: Endpoint) -> int:
    return max(1, len(getattr(endpoint, "engines", None) or [endpoint]))


async def _context_limit(endpoint: Endpoint, settings: CollectorSettings) -> int | None:
    """min(spec.rollout.maxContextLen, the engines' context length): a request that does not fit
    would be a 400 from SGLang."""
    limits = [settings.max_context_len]
    ask = getattr(endpoint, "context_length", None)
    if ask is not None:
        limits.append(await ask())
    found = [n for n in limits if n is not None]
    return min(found) if found else None


def _accepted_kwargs(fn: Callable[..., Any], offered: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments ``fn`` declares (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(fn).parameters
    if any(p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return offered
    return {k: v for k, v in offered.items() if k in params}


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
    limit = settings.server_concurrency * _engine_count(endpoint) if settings.server_concurrency else None
    flight = TrackedEndpoint(endpoint, limit, f"kuberl-{rollout_id}-{secrets.token_hex(4)}")
    context_len = await _context_limit(endpoint, settings)

    def reused_tokens(group: list[Sample]) -> None:
        for s in group:
            if s.response_length and not s.status.is_finished:
                result.resumed_samples += 1
                result.tokens_reused += s.response_length

    async def generate_one(group: list[Sample], k: int) -> None:
        sample = group[k]
        if settings.custom_generate is None:
            await generate_sample(flight, sample, settings.sampling_params, settings.max_new_tokens,
                                  rid_prefix=flight.rid_prefix, rollout_id=rollout_id, decode=decode,
                                  max_context_len=context_len)
            return
        if sample.status.is_finished:
            return
        params = {**settings.sampling_params, "max_new_tokens": settings.max_new_tokens}
        kwargs = _accepted_kwargs(settings.custom_generate, {
            "evaluation": settings.evaluation, "endpoint": flight, "rollout_id": rollout_id,
            "max_context_len": context_len})
        out = await settings.custom_generate(filter_args, sample, params, **kwargs)
        if not isinstance(out, Sample):
            raise EngineError(
                f"spec.rollout.customGenerateFunctionPath returned {type(out).__name__}; it must "
                "return the Sample it was given (or a replacement Sample)")
        if out.status == SampleStatus.PENDING:
            raise EngineError(
                "spec.rollout.customGenerateFunctionPath returned a PENDING sample; set its status "
                "(completed, truncated, aborted or failed) from the engine's finish_reason")
        if out.response_ids:
            out.metadata.setdefault("start_rollout_id", rollout_id)
        group[k] = out

    batched = settings.batch_groups and settings.custom_generate is None and flight.sends_batches

    async def generate_all(group: list[Sample]) -> None:
        # A group larger than the concurrency bound could never get its slots at once.
        if batched and (limit is None or len(group) <= limit):
            await generate_batch(flight, group, settings.sampling_params, settings.max_new_tokens,
                                 rid_prefix=flight.rid_prefix, rollout_id=rollout_id, decode=decode,
                                 max_context_len=context_len)
            return
        await asyncio.gather(*(generate_one(group, k) for k in range(len(group))))

    async def run_group(group: list[Sample]) -> list[Sample]:
        before = sum(s.response_length for s in group)
        for attempt in range(settings.max_failed_retries + 1):
            await generate_all(group)
            failed = [s for s in group if s.status == SampleStatus.FAILED]
            if not failed or stopping:
                break
            for s in failed:  # an engine went away: requeue on the remaining ones
                s.status = SampleStatus.PENDING
            log.warning("retrying %d samples after engine failure (attempt %d): %s", len(failed),
                        attempt + 1, failed[0].metadata.get("error"))
            # A blip (a dropped connection) must not take the only engine out for good: engines
            # marked down are probed and put back when /health_generate answers again.
            restore = getattr(endpoint, "restore", None)
            if restore is not None:
                await asyncio.sleep(min(2.0, 0.25 * 2**attempt))
                await restore()
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

    async def send_aborts() -> None:
        first = result.abort_rounds == 0
        if await flight.abort_in_flight(everything=first and settings.exclusive_engines):
            result.abort_rounds += 1

    if launch_wave() == 0:
        return result
    last_abort = deadline = 0.0
    try:
        while running:
            done, _ = await asyncio.wait(
                running, return_when=asyncio.FIRST_COMPLETED,
                timeout=settings.abort_interval_s if stopping else None,
            )
            if stopping and running.keys() - done:
                now = time.monotonic()
                if now > deadline:
                    raise EngineError(
                        f"{len(flight.in_flight)} aborted requests did not come back within "
                        f"{settings.abort_timeout_s:.0f} s (rids {sorted(flight.in_flight)[:4]}...)")
                if now - last_abort >= settings.abort_interval_s:
                    # An abort that reached the engine before the request was registered was
                    # dropped there (SGLang 0.5.14): send again until every request came back.
                    await send_aborts()
                    last_abort = now
            for task in done:
                group = running.pop(task)
                task.result()  # re-raise engine errors
                if any(s.status in (SampleStatus.ABORTED, SampleStatus.FAILED) for s in group):
                    _park_aborted(group, settings, buffer, result)
                    continue
                decision = await verdict(group)
                if not decision.keep:
                    result.dropped[decision.reason or "filtered"] += 1
                elif len(kept) < settings.target_groups:
                    kept.append(group)
                elif settings.partial_rollout:  # finished after the target: train it next time
                    buffer.put(group)
                    result.late_groups_buffered += 1
                else:  # slime drops these; buffering them would train stale data unmarked
                    result.late_groups_dropped += 1
            if len(kept) >= settings.target_groups and not stopping and running:
                stopping = flight.stopped = True
                deadline = time.monotonic() + settings.abort_timeout_s
                await send_aborts()
                last_abort = time.monotonic()
            if not stopping and len(kept) + len(running) < settings.target_groups:
                if result.waves >= settings.max_waves:
                    raise EngineError(
                        f"dynamic sampling kept {len(kept)}/{settings.target_groups} groups after "
                        f"{result.waves} waves (dropped: {dict(result.dropped)}); "
                        + _why_nothing_is_kept(result.dropped)
                    )
                if launch_wave() == 0 and not running:
                    break  # the data ran out
    except BaseException:
        for task in running:
            task.cancel()
        raise
    result.groups = kept
    result.peak_in_flight = flight.peak_in_flight
    samples = [s for g in kept for s in g]
    result.over_context_samples = sum(1 for s in samples if s.metadata.get("over_context"))
    version = settings.policy_version or flight.latest_version
    if version is not None:
        mask = stale_token_handling(settings.mask_offpolicy, settings.use_tis) == "mask"
        result.stale_tokens, result.response_tokens = mark_stale(samples, version, mask)
    else:
        result.response_tokens = sum(s.response_length for s in samples)
    result.wall_s = time.perf_counter() - t0
    return result


def _park_aborted(group: list[Sample], settings: CollectorSettings, buffer: PartialRolloutBuffer,
                  result: RolloutResult) -> None:
    """An aborted group keeps its partial tokens in the buffer, or is reset when partial rollout is off."""
    aborted = [s for s in group if s.status in (SampleStatus.ABORTED, SampleStatus.FAILED)]
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


def _why_nothing_is_kept(dropped: Counter) -> str:
    """The likely cause when the group filter keeps (almost) nothing, named by its main reason."""
    if dropped and dropped.most_common(1)[0][0] == "zero_std":
        return ("almost every group got identical rewards (zero std): the policy may have collapsed "
                "(lower spec.optimizer.lr, watch the entropy) or the reward cannot tell samples apart "
                "(check spec.rollout.rmType against the data's labels)")
    return "the filter spec.rollout.dynamicSamplingFilterPath drops almost everything"
