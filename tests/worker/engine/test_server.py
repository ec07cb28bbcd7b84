"""Embedded-engine behaviour beyond the shared protocol tests: batching, queueing, versions, payloads."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import torch

from kuberl.worker.engine.server import parse_args
from kuberl.worker.rollout.engine_client import EngineClient, EngineHTTPError

PROMPTS = [[1, 89, 87, 275], [1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [1, 40]]
GREEDY = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}


async def started(handle, tokens: int = 3) -> None:
    """Until the engine has generated a few tokens since this call."""
    counters = handle.engine.scheduler.counters
    base = counters["generation_tokens"]
    while counters["generation_tokens"] < base + tokens:
        await asyncio.sleep(0.005)


async def test_concurrent_requests_match_one_at_a_time(thread_engine):
    """Continuous batching (left padding, joins mid-flight) must not change any row's output."""
    async with EngineClient(thread_engine.url) as c:
        alone = [await c.generate(p, GREEDY) for p in PROMPTS]
        staggered = []
        for p in PROMPTS:  # later requests join a batch that is already decoding
            staggered.append(asyncio.create_task(c.generate(p, GREEDY)))
            await asyncio.sleep(0.002)
        together = await asyncio.gather(*staggered)
    for a, b in zip(alone, together, strict=True):
        assert a.output_ids == b.output_ids
        assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) < 1e-4


async def test_abort_of_a_queued_request_returns_no_tokens(thread_engine):
    async with EngineClient(thread_engine.url) as c:
        await c.pause("in_place")
        task = asyncio.create_task(c.generate(PROMPTS[0], GREEDY, rid="queued-0001"))
        await asyncio.sleep(0.2)
        await c.abort("queued-0001")
        out = await task
        await c.continue_generation()
    assert out.finish_reason["type"] == "abort"
    assert out.finish_reason["message"] == "Abort in waiting queue" and out.output_ids == []


async def test_pause_abort_mode_aborts_in_flight_work(thread_engine):
    async with EngineClient(thread_engine.url) as c:
        task = asyncio.create_task(c.generate(PROMPTS[0], {"max_new_tokens": 900,
                                                           "ignore_eos": True}))
        await started(thread_engine)
        await c.pause("abort")
        assert (await task).finish_type == "abort"
        await c.continue_generation()
        assert len((await c.generate(PROMPTS[0], GREEDY)).output_ids) == 12


async def test_weight_update_while_paused_in_place_is_recorded_in_version_spans(thread_engine):
    engine = thread_engine.engine
    named = [(n, p.detach() + 0.3) for n, p in engine.model.named_parameters()]
    async with EngineClient(thread_engine.url) as c:
        task = asyncio.create_task(c.generate(PROMPTS[0], {"max_new_tokens": 900,
                                                           "ignore_eos": True}))
        await started(thread_engine)
        await c.pause("in_place")
        await c.update_weights_from_tensor(named, weight_version="v2")
        await c.continue_generation()
        await asyncio.sleep(0.1)
        await c.abort(abort_all=True)
        out = await task
    spans = out.weight_versions
    assert [s["version"] for s in spans] == ["default", "v2"]
    assert spans[0]["start"] == 0 and spans[0]["end"] == spans[1]["start"]
    assert spans[1]["end"] == len(out.output_ids) and out.weight_version == "v2"


async def test_weight_update_waits_for_in_flight_requests_when_not_paused(thread_engine):
    engine = thread_engine.engine
    named = [(n, p.detach().clone()) for n, p in engine.model.named_parameters()]
    async with EngineClient(thread_engine.url) as c:
        gen = asyncio.create_task(c.generate(PROMPTS[0], {"max_new_tokens": 100,
                                                          "ignore_eos": True}))
        await started(thread_engine)
        upd = asyncio.create_task(c.update_weights_from_tensor(named, weight_version="w1"))
        out = await gen
        await upd
    assert out.finish_type == "length" and out.weight_version == "default"
    assert len(out.weight_versions) <= 1


async def test_update_from_tensor_changes_weights_and_rejects_bad_names(thread_engine):
    name = "model.norm.weight"
    async with EngineClient(thread_engine.url) as c:
        await c.update_weights_from_tensor([(name, torch.full((64,), 2.0))], weight_version="t1")
        assert await c.get_weights_by_name(name, 3) == [2.0, 2.0, 2.0]
        with pytest.raises(EngineHTTPError, match="unknown parameter names"):
            await c.update_weights_from_tensor([("nope", torch.zeros(1))])
        with pytest.raises(EngineHTTPError, match="shape mismatch"):
            await c.update_weights_from_tensor([(name, torch.zeros(3))])
        assert (await c.model_info())["weight_version"] == "t1"


async def test_input_logprobs_match_a_forward_pass(thread_engine):
    prompt = PROMPTS[1]
    async with EngineClient(thread_engine.url) as c:
        out = await c.generate(prompt, {"max_new_tokens": 0, "temperature": 0.0},
                               logprob_start_len=0)
    with torch.no_grad():
        logits = thread_engine.engine.model(torch.tensor([prompt])).logits[0, :-1]
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(prompt[1:])[:, None]).squeeze(1)
    assert out.input_logprobs[0] is None and out.output_ids == []
    assert torch.allclose(torch.tensor(out.input_logprobs[1:]), ref, atol=1e-4)


async def test_min_new_tokens_and_top_k_one(thread_engine):
    async with EngineClient(thread_engine.url) as c:
        greedy = await c.generate(PROMPTS[0], GREEDY)
        topk1 = await c.generate(PROMPTS[0], {**GREEDY, "temperature": 1.0, "top_k": 1})
        stop = greedy.output_ids[0]
        held = await c.generate(PROMPTS[0], {**GREEDY, "stop_token_ids": [stop],
                                             "min_new_tokens": 4})
    assert topk1.output_ids == greedy.output_ids
    assert len(held.output_ids) >= 4 and stop not in held.output_ids[:4]


@pytest.mark.parametrize(("body", "status", "shape"), [
    ({"sampling_params": {}}, 400, "error-str"),  # neither text nor input_ids
    ({"input_ids": [1, 2], "sampling_params": {"top_p": 1.5}}, 400, "error-obj"),
    ({"input_ids": [1, 2], "sampling_params": {"temperature": -1}}, 400, "error-obj"),
    ({"input_ids": ["a"]}, 400, "openai"),
])
def test_error_shapes(thread_engine, body, status, shape):
    r = httpx.post(thread_engine.url + "/generate", json=body, timeout=30)
    assert r.status_code == status
    data = r.json()
    if shape == "error-str":
        assert isinstance(data["error"], str)
    elif shape == "error-obj":
        assert isinstance(data["error"]["message"], str)
    else:
        assert data["object"] == "error" and data["code"] == 400


def test_batch_and_n_return_lists_and_text_input_works(thread_engine):
    url = thread_engine.url + "/generate"
    batch = httpx.post(url, json={"input_ids": PROMPTS[:2], "sampling_params": GREEDY}, timeout=30)
    many = httpx.post(url, json={"text": "what is", "sampling_params": {**GREEDY, "n": 3}},
                      timeout=30)
    assert [len(o["output_ids"]) for o in batch.json()] == [12, 12]
    assert len(many.json()) == 3


def test_streaming_chunks_are_cumulative_and_end_with_done(thread_engine):
    body = {"input_ids": PROMPTS[0], "sampling_params": GREEDY, "stream": True}
    with httpx.stream("POST", thread_engine.url + "/generate", json=body, timeout=30) as r:
        lines = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    lengths = [len(c["output_ids"]) for c in chunks]
    assert lengths == sorted(lengths) and lengths[-1] == 12
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_pause_and_continue_require_a_json_body(thread_engine):
    assert httpx.post(thread_engine.url + "/pause_generation", timeout=10).status_code == 400
    assert httpx.post(thread_engine.url + "/continue_generation", json={},
                      timeout=10).status_code == 200


def test_metrics_use_sglang_names(thread_engine):
    text = httpx.get(thread_engine.url + "/metrics", timeout=10).text
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs",
                 "sglang:generation_tokens_total", "sglang:num_aborted_requests_total"):
        assert name in text


def test_cli_accepts_and_ignores_sglang_only_flags():
    args = parse_args(["--model-path", "m", "--port", "1234", "--mem-fraction-static", "0.7"])
    assert (args.model_path, args.port, args.host) == ("m", 1234, "127.0.0.1")


async def test_glm4_model_is_served_with_forward_pass_logprobs(tmp_path):
    """The reference workload's family (GLM4) through the same engine."""
    from transformers import AutoModelForCausalLM

    from kuberl.worker.engine.server import EngineArgs, serve_in_thread
    from kuberl.worker.tiny_model import build_tiny_model

    path = build_tiny_model(tmp_path / "glm4", "glm4", seed=0)
    handle = serve_in_thread(EngineArgs(model_path=str(path), port=0))
    try:
        async with EngineClient(handle.url) as c:
            out = await c.generate(PROMPTS[1], GREEDY)
            info = await c.model_info()
    finally:
        handle.stop()
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([PROMPTS[1] + out.output_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(PROMPTS[1]) - 1 : -1]
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.output_ids)[:, None]).squeeze(1)
    assert info["model_type"] == "glm4"
    assert torch.allclose(torch.tensor(out.logprobs), ref, atol=1e-4)


# ---- what the twin copies from SGLang 0.5.14 (docs/rollout.md, "real SGLang vs the twin") ------------------

async def test_abort_matches_the_exact_rid_and_a_prefix_aborts_nothing(thread_engine):
    long = {"temperature": 1.0, "max_new_tokens": 200, "ignore_eos": True}
    async with EngineClient(thread_engine.url) as c:
        prefixed = asyncio.create_task(c.generate(PROMPTS[0], long, rid="pfx-0001"))
        exact = asyncio.create_task(c.generate(PROMPTS[0], long, rid="pfx-0002"))
        await started(thread_engine)
        await c.abort("pfx-")  # 200, and nothing is aborted
        await c.abort("pfx-0002")
        assert (await exact).finish_type == "abort"
        out = await prefixed
    assert out.finish_reason == {"type": "length", "length": 200}


async def test_abort_before_the_request_is_registered_is_dropped(thread_engine):
    async with EngineClient(thread_engine.url) as c:
        await c.abort("early-0001")  # nothing holds this rid yet: SGLang forgets the abort
        out = await c.generate(PROMPTS[0], GREEDY, rid="early-0001")
    assert out.finish_reason == {"type": "length", "length": 12}


@pytest.fixture
def deterministic_engine(tiny_model_dir):
    from kuberl.worker.engine.server import EngineArgs, serve_in_thread

    handle = serve_in_thread(EngineArgs(model_path=str(tiny_model_dir), port=0,
                                        enable_deterministic_inference=True, context_length=512))
    yield handle
    handle.stop()


async def test_sampling_seed_is_honoured_only_with_deterministic_inference(thread_engine,
                                                                         deterministic_engine):
    seeded = {"temperature": 1.0, "max_new_tokens": 12, "ignore_eos": True, "sampling_seed": 7}
    async with EngineClient(thread_engine.url) as plain, \
            EngineClient(deterministic_engine.url) as det:
        free = [(await plain.generate(PROMPTS[0], seeded)).output_ids for _ in range(3)]
        fixed = [(await det.generate(PROMPTS[0], seeded)).output_ids for _ in range(3)]
        other = await det.generate(PROMPTS[0], {**seeded, "sampling_seed": 8})
        assert (await plain.server_info())["enable_deterministic_inference"] is False
    assert len({tuple(x) for x in free}) > 1  # the seed was ignored
    assert fixed[0] == fixed[1] == fixed[2] and other.output_ids != fixed[0]


async def test_stop_token_ids_are_ignored_under_ignore_eos(thread_engine):
    async with EngineClient(thread_engine.url) as c:
        free = await c.generate(PROMPTS[0], GREEDY)
        out = await c.generate(PROMPTS[0], {**GREEDY, "stop_token_ids": [free.output_ids[3]]})
        stopped = await c.generate(PROMPTS[0], {"temperature": 0.0, "max_new_tokens": 12,
                                                "stop_token_ids": [free.output_ids[3]]})
    assert out.output_ids == free.output_ids and out.finish_reason["type"] == "length"
    assert stopped.finish_reason == {"type": "stop", "matched": free.output_ids[3]}


async def test_server_info_context_length_is_null_unless_given_and_v1_models_has_it(
    thread_engine, deterministic_engine
):
    async with EngineClient(thread_engine.url) as c, EngineClient(deterministic_engine.url) as d:
        assert (await c.server_info())["context_length"] is None
        assert (await c.models())["data"][0]["max_model_len"] == 1024
        assert await c.context_length() == 1024
        assert (await d.server_info())["context_length"] == 512
        assert await d.context_length() == 512
