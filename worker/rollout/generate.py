"""Turn prompts into ``Sample`` records through any SGLang-protocol endpoint.

An endpoint is an EngineClient, an EngineBalancer or a RouterClient: anything with
``generate(input_ids, sampling_params, rid=...)`` and ``abort(...)``. Every sample has its own rid (SGLang
0.5.14 aborts exact rids only, so the caller keeps every rid it sent); a group goes out as one batched
request where the endpoint can send batches (``generate_batch``), else one request per sample; resumption of
aborted samples by sending prompt + partial response with the remaining token budget, clamped to the
context length (sglang-api.md §7.4).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from kuberl.worker.rollout.engine_client import EngineHTTPError, GenerateOutput
from kuberl.worker.rollout.sample import Sample, SampleStatus


class Endpoint(Protocol):
    async def generate(
        self, input_ids: list[int], sampling_params: dict[str, Any], rid: str | None = None,
        return_logprob: bool = True, logprob_start_len: int | None = None,
    ) -> GenerateOutput: ...

    async def abort(self, rid: str | None = None, abort_all: bool = False) -> None: ...


class BatchEndpoint(Endpoint, Protocol):
    """An endpoint that can send several samples in one ``/generate`` (EngineClient, EngineBalancer)."""

    async def generate_batch(
        self, input_ids: list[list[int]], sampling_params: list[dict[str, Any]], rids: list[str],
        return_logprob: bool = True,
    ) -> list[GenerateOutput]: ...


def rid_for(prefix: str, index: int) -> str:
    """Fixed-width rid: no sample's rid is a prefix of another's (SGLang's scheduler still matches
    prefixes behind the front end's exact-rid check, so this keeps an abort to one sample)."""
    return f"{prefix}-{index:012d}"


def request_params(sampling_params: dict[str, Any], sample: Sample, max_new_tokens: int
                   ) -> dict[str, Any]:
    """The per-request ``sampling_params``: the remaining budget, and with seeded sampling a seed of
    its own per sample (``sampling_seed`` + sample index, as slime does), so a group's samples differ."""
    params = {**sampling_params, "max_new_tokens": max_new_tokens}
    if params.get("sampling_seed") is not None:
        params["sampling_seed"] = int(params["sampling_seed"]) + sample.index
    return params


def make_group(
    prompt_ids: list[int], n: int, group_index: int, first_index: int, label: Any = None,
    prompt: Any = None, metadata: dict[str, Any] | None = None,
) -> list[Sample]:
    """n pending samples of one prompt, indices first_index .. first_index+n-1."""
    return [
        Sample(index=first_index + k, group_index=group_index, prompt_ids=list(prompt_ids),
               label=label, prompt=prompt, metadata=copy.deepcopy(metadata or {}))
        for k in range(n)
    ]


@dataclass(frozen=True)
class SampleRequest:
    """One sample's ``/generate`` request: what ``generate_sample`` and the batched path both send."""

    input_ids: list[int]
    sampling_params: dict[str, Any]
    rid: str


def prepare_request(
    sample: Sample, sampling_params: dict[str, Any], max_new_tokens: int, rid_prefix: str,
    max_context_len: int | None,
) -> SampleRequest | None:
    """Pure: the request for a pending sample, or None when it needs none.

    A finished sample needs nothing; a sample with no budget left (``max_new_tokens`` minus what it
    already holds, clamped to the room under ``max_context_len``) is finished here as truncated, and a
    prompt that leaves no room at all is marked ``metadata["over_context"]``.
    """
    if sample.status.is_finished:
        return None
    remaining = max_new_tokens - sample.response_length
    if max_context_len is not None:
        room = max_context_len - len(sample.tokens)
        if room <= 0 and sample.response_length == 0:
            sample.metadata["over_context"] = True
        remaining = min(remaining, room)
    if remaining <= 0:
        sample.status = SampleStatus.TRUNCATED
        return None
    return SampleRequest(list(sample.tokens), request_params(sampling_params, sample, remaining),
                         rid_for(rid_prefix, sample.index))


def apply_output(
    sample: Sample, out: GenerateOutput, rollout_id: int | None, mask_offpolicy: bool,
    decode: Callable[[list[int]], str] | None,
) -> None:
    """Append one ``/generate`` answer to its sample: tokens, logprobs, versions, status, text."""
    if sample.response_length > 0 and mask_offpolicy:
        sample.mask_response()
    sample.append_response(out.output_ids, out.logprobs, out.weight_version, out.weight_versions)
    sample.status = SampleStatus.from_finish_type(out.finish_type)
    sample.response_text = decode(sample.response_ids) if decode else sample.response_text + out.text
    sample.metadata["finish_reason"] = out.finish_reason
    if rollout_id is not None and sample.response_ids:
        sample.metadata.setdefault("start_rollout_id", rollout_id)


def _failed(sample: Sample, error: EngineHTTPError) -> None:
    sample.status = SampleStatus.FAILED
    sample.metadata["error"] = str(error)


async def generate_sample(
    endpoint: Endpoint,
    sample: Sample,
    sampling_params: dict[str, Any],
    max_new_tokens: int,
    rid_prefix: str = "kuberl",
    rollout_id: int | None = None,
    mask_offpolicy: bool = False,
    decode: Callable[[list[int]], str] | None = None,
    max_context_len: int | None = None,
) -> Sample:
    """Generate (or resume) one sample in place and return it.

    ``max_new_tokens`` is the budget for the whole response: a resumed sample gets what is left,
    and with nothing left it is finished as truncated without a request. ``max_context_len``
    bounds prompt + response (spec.rollout.maxContextLen, or the engine's context length): the
    request asks for no more than fits, and a prompt that leaves no room is finished as truncated
    with an empty response and ``metadata["over_context"]`` (slime does the same). ``mask_offpolicy``
    excludes previously generated tokens (older weights) from the loss. A 400 raises (a bug); an
    engine that went away leaves the sample FAILED for the caller to requeue.
    """
    req = prepare_request(sample, sampling_params, max_new_tokens, rid_prefix, max_context_len)
    if req is None:
        return sample
    try:
        out = await endpoint.generate(req.input_ids, req.sampling_params, rid=req.rid,
                                      return_logprob=True)
    except EngineHTTPError as e:
        if not e.retryable:
            raise
        _failed(sample, e)
        return sample
    apply_output(sample, out, rollout_id, mask_offpolicy, decode)
    return sample


async def generate_batch(
    endpoint: BatchEndpoint,
    samples: list[Sample],
    sampling_params: dict[str, Any],
    max_new_tokens: int,
    rid_prefix: str = "kuberl",
    rollout_id: int | None = None,
    mask_offpolicy: bool = False,
    decode: Callable[[list[int]], str] | None = None,
    max_context_len: int | None = None,
) -> list[Sample]:
    """``generate_sample`` for several samples (a prompt group) in ONE ``/generate`` request.

    SGLang takes a batch as ``input_ids`` (a list of lists) with one ``rid`` and one
    ``sampling_params`` per item and answers a list in the same order (sglang-api.md §2); every
    item keeps its own rid, so aborting one sample still aborts exactly that sample. The call
    returns when the last item finishes, which is when a group is graded anyway. An engine that
    went away fails every item of the batch (the caller requeues them); a 400 raises.
    """
    todo = [(s, r) for s in samples
            if (r := prepare_request(s, sampling_params, max_new_tokens, rid_prefix,
                                     max_context_len)) is not None]
    if not todo:
        return samples
    try:
        outs = await endpoint.generate_batch(
            [r.input_ids for _, r in todo], [r.sampling_params for _, r in todo],
            [r.rid for _, r in todo], return_logprob=True)
    except EngineHTTPError as e:
        if not e.retryable:
            raise
        for s, _ in todo:
            _failed(s, e)
        return samples
    for (s, _), out in zip(todo, outs, strict=True):
        apply_output(s, out, rollout_id, mask_offpolicy, decode)
    return samples


async def generate_group(
    endpoint: Endpoint, group: list[Sample], sampling_params: dict[str, Any], max_new_tokens: int,
    **kwargs: Any,
) -> list[Sample]:
    """Generate every sample of one prompt group concurrently."""
    await asyncio.gather(
        *(generate_sample(endpoint, s, sampling_params, max_new_tokens, **kwargs) for s in group)
    )
    return group
