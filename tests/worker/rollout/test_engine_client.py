from __future__ import annotations

import json

import pytest

from kuberl.worker.rollout.engine_client import (
    EngineClient,
    EngineHTTPError,
    EngineResponse,
    GenerateOutput,
    context_length_from,
    error_message,
)
from tests.worker.conftest import free_port


@pytest.mark.parametrize(("status", "body", "message"), [
    (400, {"error": "Either text or input_ids should be provided."}, "Either text"),
    (400, {"error": {"message": "The input (9 tokens) is longer"}}, "The input (9 tokens)"),
    (400, {"object": "error", "message": "bad type", "type": "Bad Request", "code": 400},
     "bad type"),
    (400, {"success": False, "message": "no such file"}, "no such file"),
])
def test_error_message_reads_every_sglang_error_shape(status, body, message):
    assert error_message(EngineResponse(status, json.dumps(body).encode())).startswith(message)
    assert error_message(EngineResponse(400, b"Cache not flushed")) == "Cache not flushed"
    assert error_message(EngineResponse(502, b"", "Bad Gateway")) == "Bad Gateway"


def test_generate_output_takes_tokens_and_logprobs_from_the_triples():
    body = {"text": "hi", "output_ids": [5, 6],
            "meta_info": {"id": "r", "finish_reason": {"type": "stop", "matched": 6},
                          "weight_version": "3", "output_token_logprobs": [[-0.5, 5, None],
                                                                           [-1.5, 6, None]]}}
    out = GenerateOutput.from_json(body)
    assert (out.output_ids, out.logprobs, out.finish_type, out.weight_version) == (
        [5, 6], [-0.5, -1.5], "stop", "3")


def test_generate_output_refuses_disagreeing_tokens_and_unknown_finish():
    bad = {"output_ids": [5, 7], "meta_info": {"finish_reason": {"type": "length"},
                                               "output_token_logprobs": [[0, 5, None], [0, 6, None]]}}
    with pytest.raises(EngineHTTPError, match="disagree"):
        GenerateOutput.from_json(bad)
    with pytest.raises(EngineHTTPError, match="finish_reason"):
        GenerateOutput.from_json({"meta_info": {"finish_reason": {"type": "weird"}}})


def test_weight_version_spans_are_read_as_dicts_or_triples():
    meta = {"finish_reason": {"type": "length"}, "weight_versions": [["1", 0, 2],
                                                                    {"version": 2, "start": 2, "end": 5}]}
    out = GenerateOutput.from_json({"meta_info": meta})
    assert out.weight_versions == [{"version": "1", "start": 0, "end": 2},
                                   {"version": "2", "start": 2, "end": 5}]


def test_queued_abort_output_with_reduced_meta_info_parses():
    out = GenerateOutput.from_json({"meta_info": {
        "id": "x", "finish_reason": {"type": "abort", "message": "Abort in waiting queue"},
        "weight_version": "default", "e2e_latency": 0.1}})
    assert out.output_ids == [] and out.finish_type == "abort" and out.prompt_tokens is None


async def test_unreachable_engine_is_retryable_and_generate_is_not_retried():
    url = f"http://127.0.0.1:{free_port()}"
    async with EngineClient(url, retries=2, backoff_s=0.01) as c:
        assert await c.health() is False
        with pytest.raises(EngineHTTPError) as err:
            await c.generate([1], {})
    assert err.value.retryable and err.value.status is None and "unreachable" in str(err.value)


def test_context_length_falls_back_from_server_info_to_v1_models_to_the_model_config():
    models = {"data": [{"id": "m", "max_model_len": 4096}]}
    assert context_length_from({"context_length": 2048}, models) == 2048
    assert context_length_from({"context_length": None}, models) == 4096  # SGLang without the flag
    assert context_length_from({"context_length": None}, {}, {"max_position_embeddings": 32768}) == 32768
    assert context_length_from({}, {"data": [{"id": "m"}]}, None) is None


def test_closing_in_the_loop_that_used_it_leaves_nothing_open_and_a_new_loop_gets_a_new_session(
    thread_engine, caplog
):
    """The driver runs each stage in its own asyncio.run and closes its clients there: nothing may be left
    for the garbage collector (aiohttp reports "Unclosed client session" / unclosed sockets then). A client
    used again from a later loop opens a session of its own there."""
    import asyncio
    import gc
    import warnings

    client = EngineClient(thread_engine.url)
    with warnings.catch_warnings():  # what earlier tests left for the collector is not this client's
        warnings.simplefilter("ignore")
        gc.collect()
    caplog.clear()

    async def use_and_close() -> str:
        version = (await client.model_info())["weight_version"]
        await client.aclose()
        return version

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert asyncio.run(use_and_close()) is not None
        assert client._session is None
        assert asyncio.run(use_and_close()) is not None  # a second loop, as the driver's next stage
        gc.collect()
    unclosed = [str(w.message) for w in caught if "nclosed" in str(w.message)]
    assert not unclosed and "nclosed" not in caplog.text, (unclosed, caplog.text)

    first_loop_session = []

    async def use_only() -> None:
        await client.model_info()
        first_loop_session.append(client._session)

    asyncio.run(use_only())
    asyncio.run(use_only())  # no aclose in between: the first loop's session is replaced, marked closed
    assert first_loop_session[0] is not first_loop_session[1] and first_loop_session[0].closed
    asyncio.run(client.aclose())
