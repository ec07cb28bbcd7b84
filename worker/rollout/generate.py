"""Turn prompts into ``Sample`` records through any SGLang-protocol endpoint.

An endpoint is an EngineClient, an EngineBalancer or a RouterClient: anything with
``generate(input_ids, sampling_params, rid=...)`` and ``abort(...)``. One request per sample, a
fixed-width rid per sample (SGLang aborts by rid prefix), and resumption of aborted samples by
sending prompt + partial response with the remaining token budget (sglang-api.md §7.4).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any, Protocol

from kuberl.worker.rollout.engine_client import EngineHTTPError, GenerateOutput
from kuberl.worker.rollout.sample import Sample, SampleStatus


class Endpoint(Protocol):
    async def generate(
        self, input_ids: list[int], sampling_params: dict[str, Any], rid: str | None = None,
        return_logprob: bool = True, logprob_start_len: int | None = None,
    ) -> GenerateOutput: ...

    async def abort(self, rid: str | None = None, abort_all: bool = False) -> None: ...


def rid_for(prefix: str, index: int) -> str:
    """Fixed-width rid: no sample's rid is a prefix of another's, so prefix aborts hit one sample."""
    return f"{prefix}-{index:012d}"


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


async def generate_sample(
    endpoint: Endpoint,
    sample: Sample,
    sampling_params: dict[str, Any],
    max_new_tokens: int,
    rid_prefix: str = "kuberl",
    rollout_id: int | None = None,
    mask_offpolicy: bool = False,
    decode: Callable[[list[int]], str] | None = None,
) -> Sample:
    """Generate (or resume) one sample in place and return it.

    ``max_new_tokens`` is the budget for the whole response: a resumed sample gets what is left,
    and with nothing left it is finished as truncated without a request. ``mask_offpolicy``
    excludes previously generated tokens (older weights) from the loss. A 400 raises (a bug); an
    engine that went away leaves the sample FAILED for the caller to requeue.
    """
    if sample.status.is_finished:
        return sample
    remaining = max_new_tokens - sample.response_length
    if remaining <= 0:
        sample.status = SampleStatus.TRUNCATED
        return sample
    resumed = sample.response_length > 0
    try:
        out = await endpoint.generate(
            sample.tokens, {**sampling_params, "max_new_tokens": remaining},
            rid=rid_for(rid_prefix, sample.index), return_logprob=True,
        )
    except EngineHTTPError as e:
        if not e.retryable:
            raise
        sample.status = SampleStatus.FAILED
        sample.metadata["error"] = str(e)
        return sample
    if resumed and mask_offpolicy:
        sample.mask_response()
    sample.append_response(out.output_ids, out.logprobs, out.weight_version, out.weight_versions)
    sample.status = SampleStatus.from_finish_type(out.finish_type)
    sample.response_text = decode(sample.response_ids) if decode else sample.response_text + out.text
    sample.metadata["finish_reason"] = out.finish_reason
    if rollout_id is not None and sample.response_ids:
        sample.metadata.setdefault("start_rollout_id", rollout_id)
    return sample


async def generate_group(
    endpoint: Endpoint, group: list[Sample], sampling_params: dict[str, Any], max_new_tokens: int,
    **kwargs: Any,
) -> list[Sample]:
    """Generate every sample of one prompt group concurrently."""
    await asyncio.gather(
        *(generate_sample(endpoint, s, sampling_params, max_new_tokens, **kwargs) for s in group)
    )
    return group
