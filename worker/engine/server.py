"""An HTTP server around a Hugging Face causal LM that speaks SGLang's native API (sglang-api.md §9).

Local runs and CPU tests use it where production runs real SGLang, so the worker's rollout code is
the same in both. Launch: ``python -m kuberl.worker.engine.server --model-path DIR --port N``.
Unknown ``--flags`` (SGLang server arguments) are accepted and ignored, so one launcher serves both.
Where real SGLang 0.5.14 differs from what a client might expect, the twin copies it (docs/rollout.md
has the table): exact-rid aborts that drop rids not yet registered, ``sampling_seed`` only with
``--enable-deterministic-inference``, ``context_length: null`` in /server_info unless
``--context-length`` was given, stop tokens ignored under ``ignore_eos``. It stays fp32 on CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from aiohttp import web

from kuberl.worker.engine.http_shapes import bad_request, error_response, json_body
from kuberl.worker.engine.sampling import SamplingParams, SamplingParamsError
from kuberl.worker.engine.scheduler import GenerationRequest, Scheduler
from kuberl.worker.engine.weight_routes import WeightRoutes

log = logging.getLogger(__name__)
VERSION = "kuberl-embedded-0.1"
HEALTH_TIMEOUT_S = 20.0


@dataclass
class EngineArgs:
    model_path: str
    host: str = "127.0.0.1"
    port: int = 30000
    weight_version: str = "default"
    random_seed: int = 0
    context_length: int | None = None
    max_running_requests: int = 256
    device: str = "cpu"
    dtype: str = "float32"
    api_key: str | None = None
    served_model_name: str | None = None
    enable_deterministic_inference: bool = False
    load_format: str = "auto"  # "dummy": random weights of the config (SGLang's flag, throughput runs)


class EmbeddedEngine(WeightRoutes):
    """Model, tokenizer, step loop and the aiohttp application that exposes them."""

    def __init__(self, args: EngineArgs) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.args = args
        dtype = getattr(torch, args.dtype)
        if args.load_format == "dummy":
            from kuberl.worker.random_init import random_hf_model

            self.model = random_hf_model(args.model_path, dtype, seed=args.random_seed)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(args.model_path, dtype=dtype)
        self.model.to(args.device).eval()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(args.model_path)
        except Exception:  # a model directory without a tokenizer still serves input_ids
            self.tokenizer = None
        cfg = self.model.config
        self.context_len = args.context_length or int(getattr(cfg, "max_position_embeddings", 4096))
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = cfg.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.scheduler = Scheduler(
            self.model, eos_ids, self._decode if self.tokenizer else None,
            weight_version=args.weight_version, max_running_requests=args.max_running_requests,
            seed=args.random_seed, deterministic=args.enable_deterministic_inference,
        )
        # rids the front end holds (SGLang's rid_to_state): an abort for any other rid is dropped
        self._registered: Counter[str] = Counter()
        self.started = time.time()
        self.groups: dict[str, Any] = {}  # weight-update process groups by name
        self.released: dict[str, Any] = {}  # memory released for colocation (weight_routes.py)

    def _decode(self, ids: list[int], skip_special: bool) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special) if self.tokenizer else ""

    # ---- application -----------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 30, middlewares=[self._auth])
        r = app.router
        r.add_route("POST", "/generate", self.generate)
        r.add_route("PUT", "/generate", self.generate)
        r.add_post("/abort_request", self.abort_request)
        r.add_post("/pause_generation", self.pause_generation)
        r.add_post("/continue_generation", self.continue_generation)
        r.add_post("/update_weights_from_disk", self.update_weights_from_disk)
        r.add_post("/update_weights_from_tensor", self.update_weights_from_tensor)
        r.add_post("/update_weight_version", self.update_weight_version)
        r.add_post("/init_weights_update_group", self.init_weights_update_group)
        r.add_post("/update_weights_from_distributed", self.update_weights_from_distributed)
        r.add_post("/destroy_weights_update_group", self.destroy_weights_update_group)
        for path, handler in (
            ("/get_weights_by_name", self.get_weights_by_name),
            ("/flush_cache", self.flush_cache),
            ("/release_memory_occupation", self.release_memory_occupation),
            ("/resume_memory_occupation", self.resume_memory_occupation),
        ):
            r.add_get(path, handler)
            r.add_post(path, handler)
        for path, handler in (
            ("/health", self.health), ("/ready", self.health), ("/health_generate", self.health_generate),
            ("/model_info", self.model_info), ("/get_model_info", self.model_info),
            ("/server_info", self.server_info), ("/get_server_info", self.server_info),
            ("/v1/models", self.models), ("/metrics", self.metrics), ("/version", self.version),
        ):
            r.add_get(path, handler)
        app.on_startup.append(lambda _app: self._start())
        app.on_cleanup.append(lambda _app: self._stop())
        return app

    async def _start(self) -> None:
        if not self.scheduler._thread.is_alive():
            self.scheduler.start()

    async def _stop(self) -> None:
        await asyncio.to_thread(self.scheduler.stop)

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        key = self.args.api_key
        if key and request.headers.get("Authorization") != f"Bearer {key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    # ---- generation ------------------------------------------------------------------------
    async def generate(self, request: web.Request) -> web.StreamResponse:
        body = await json_body(request, required=True)
        if "weights" in self.released:
            return error_response("the weights are released (/release_memory_occupation); call "
                                  "/resume_memory_occupation and update the weights first")
        try:
            items, single = self._parse_generate(body)
        except SamplingParamsError as e:
            return error_response(str(e))
        except _SchemaError as e:
            return web.json_response({"error": str(e)}, status=400)
        except (TypeError, ValueError) as e:
            return bad_request(str(e))
        for req in items:
            if (msg := self._lengtherror_response(req)) is not None:
                return error_response(msg)
        loop = asyncio.get_running_loop()
        if body.get("stream"):
            return await self._stream(request, items, loop, body)
        futures = [self._submit(req, loop, None) for req in items]
        try:
            await asyncio.gather(*futures)
        except asyncio.CancelledError:  # client went away: free the slots
            for req in items:
                self.scheduler.abort(req.rid, abort_all=False)
            raise
        outs = [self._output(req, body) for req in items]
        return web.json_response(outs[0] if single else outs)

    def _submit(self, req: GenerationRequest, loop, queue: asyncio.Queue | None) -> asyncio.Future:
        done = loop.create_future()

        def on_update(r: GenerationRequest, finished: bool) -> None:
            if queue is not None:
                loop.call_soon_threadsafe(queue.put_nowait, (r, finished))
            if finished:
                loop.call_soon_threadsafe(lambda: done.done() or done.set_result(r))

        req.on_update = on_update
        self._registered[req.rid] += 1
        done.add_done_callback(lambda _f: self._unregister(req.rid))
        self.scheduler.submit(req)
        return done

    def _unregister(self, rid: str) -> None:
        self._registered[rid] -= 1
        if self._registered[rid] <= 0:
            del self._registered[rid]

    async def _stream(self, request, items, loop, body) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()
        for req in items:
            self._submit(req, loop, queue)
        remaining = len(items)
        while remaining:
            req, finished = await queue.get()
            remaining -= int(finished)
            chunk = self._output(req, body)
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    def _parse_generate(self, body: dict[str, Any]) -> tuple[list[GenerationRequest], bool]:
        ids, text = body.get("input_ids"), body.get("text")
        if ids is None and text is None:
            raise _SchemaError("Either text or input_ids should be provided.")
        if ids is None:
            if self.tokenizer is None:
                raise _SchemaError("text input needs a tokenizer in the model directory")
            texts = [text] if isinstance(text, str) else list(text)
            ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
            single = isinstance(text, str)
        else:
            single = not (ids and isinstance(ids[0], list))
            ids = [ids] if single else ids
        ids = [[int(t) for t in seq] for seq in ids]
        raw_params = body.get("sampling_params") or {}
        params = [
            SamplingParams.from_json(raw_params[i] if isinstance(raw_params, list) else raw_params)
            for i in range(len(ids))
        ]
        rids = body.get("rid")
        rids = [rids] if isinstance(rids, str) else list(rids or [])
        if rids and len(rids) != len(ids):
            raise _SchemaError(f"rid has {len(rids)} entries but there are {len(ids)} inputs")
        rids = rids or [uuid.uuid4().hex for _ in ids]
        items = []
        for seq, p, rid in zip(ids, params, rids, strict=True):
            for k in range(p.n):
                items.append(GenerationRequest(
                    rid=rid if p.n == 1 else f"{rid}-{k}", input_ids=seq, params=p,
                    return_logprob=bool(body.get("return_logprob")),
                    logprob_start_len=int(body.get("logprob_start_len", -1)),
                ))
        return items, single and len(items) == 1

    def _lengtherror_response(self, req: GenerationRequest) -> str | None:
        n, limit = len(req.input_ids), self.context_len
        if n == 0:
            return "The input_ids is empty."
        if n >= limit:
            return (f"The input ({n} tokens) is longer than the model's context length "
                    f"({limit} tokens).")
        if n + req.params.max_new_tokens > limit:
            return (f"Requested token count exceeds the model's maximum context length of {limit} "
                    f"tokens. You requested a total of {n + req.params.max_new_tokens} tokens: {n} "
                    f"tokens from the input messages and {req.params.max_new_tokens} tokens for the "
                    "completion. Please reduce the number of tokens in the input messages or the "
                    "completion to fit within the limit.")
        return None

    def _output(self, req: GenerationRequest, body: dict[str, Any]) -> dict[str, Any]:
        p = req.params
        text = self._decode(req.output_ids, p.skip_special_tokens)
        reason = req.finish_reason
        matched = (reason or {}).get("matched")
        if isinstance(matched, str) and not p.no_stop_trim and matched in text:
            text = text[: text.find(matched)]
        meta: dict[str, Any] = {
            "id": req.rid,
            "finish_reason": reason,
            "prompt_tokens": len(req.input_ids),
            "completion_tokens": len(req.output_ids),
            "cached_tokens": 0,
            "weight_version": req.weight_version or self.scheduler.weight_version,
            "e2e_latency": time.monotonic() - req.created,
        }
        if len(req.weight_versions) > 1:
            meta["weight_versions"] = [dict(s) for s in req.weight_versions]
        if req.return_logprob:
            with_text = bool(body.get("return_text_in_logprobs"))

            def triple(lp, tok):
                return [lp, tok, self._decode([tok], False) if with_text else None]

            meta["output_token_logprobs"] = [
                triple(lp, t) for lp, t in zip(req.output_logprobs, req.output_ids, strict=True)
            ]
            meta["output_token_logprobs_length"] = len(req.output_ids)
            if req.logprob_start_len >= 0:
                toks = req.input_ids[req.logprob_start_len:]
                meta["input_token_logprobs"] = [
                    triple(lp, t) for lp, t in zip(req.input_logprobs, toks, strict=False)
                ]
        return {"text": text, "output_ids": list(req.output_ids), "meta_info": meta}

    # ---- control ---------------------------------------------------------------------------
    async def abort_request(self, request: web.Request) -> web.Response:
        """200 whatever happens; a rid this front end does not hold (yet) is dropped, as in SGLang."""
        body = await json_body(request, required=False)
        rid, abort_all = str(body.get("rid") or ""), bool(body.get("abort_all"))
        if abort_all or rid in self._registered:
            self.scheduler.abort(rid, abort_all)
        return web.Response(status=200)

    async def pause_generation(self, request: web.Request) -> web.Response:
        body = await json_body(request, required=True)
        mode = body.get("mode", "abort")
        if mode not in ("abort", "in_place", "retract"):
            return error_response(f"mode must be one of abort, in_place, retract; got {mode!r}")
        await asyncio.wrap_future(self.scheduler.pause(mode))
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def continue_generation(self, request: web.Request) -> web.Response:
        await json_body(request, required=True)
        await asyncio.wrap_future(self.scheduler.resume())
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

    async def flush_cache(self, request: web.Request) -> web.Response:
        if await asyncio.wrap_future(self.scheduler.is_busy()):
            return web.Response(status=400, text="Cache not flushed because there are pending requests.")
        return web.Response(status=200, text="Cache flushed.\n")

    # ---- health and info -------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.scheduler.alive else 503)

    async def health_generate(self, request: web.Request) -> web.Response:
        s = self.scheduler
        if not s.alive:
            return web.Response(status=503)
        if time.monotonic() - s.last_output_time < 1.0 or s.stats()["paused"] or self.released:
            return web.Response(status=200)
        req = GenerationRequest(rid=f"HEALTH_CHECK_{uuid.uuid4().hex}", input_ids=[0],
                                params=SamplingParams(max_new_tokens=1, temperature=0.0))
        try:
            await asyncio.wait_for(self._submit(req, asyncio.get_running_loop(), None), HEALTH_TIMEOUT_S)
        except TimeoutError:
            s.abort(req.rid, abort_all=False)
            return web.Response(status=503)
        return web.Response(status=200)

    def _served_name(self) -> str:
        return self.args.served_model_name or self.args.model_path

    async def model_info(self, request: web.Request) -> web.Response:
        cfg = self.model.config
        return web.json_response({
            "model_path": self.args.model_path, "tokenizer_path": self.args.model_path,
            "served_model_name": self._served_name(), "is_generation": True,
            "preferred_sampling_params": None, "weight_version": self.scheduler.weight_version,
            "load_format": "auto", "reasoning_parser": None, "tool_call_parser": None,
            "disaggregation_mode": "null", "model_type": cfg.model_type,
            "architectures": list(getattr(cfg, "architectures", None) or []),
        })

    async def server_info(self, request: web.Request) -> web.Response:
        a = self.args
        return web.json_response({
            "model_path": a.model_path, "host": a.host, "port": a.port, "tp_size": 1, "dp_size": 1,
            # SGLang echoes its command line: null unless --context-length was given
            "random_seed": a.random_seed, "context_length": a.context_length,
            "enable_deterministic_inference": a.enable_deterministic_inference,
            "max_running_requests": a.max_running_requests, "device": a.device, "dtype": a.dtype,
            "weight_version": self.scheduler.weight_version, "version": VERSION,
            "internal_states": [self.scheduler.stats()], "startup_time": self.started,
        })

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self._served_name(), "object": "model", "created": int(self.started),
            "owned_by": "kuberl", "root": self.args.model_path, "max_model_len": self.context_len}]})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": VERSION})

    async def metrics(self, request: web.Request) -> web.Response:
        s, c = self.scheduler.stats(), self.scheduler.counters
        name = self._served_name()
        lines = []
        for metric, kind, value in (
            ("num_running_reqs", "gauge", s["running"]), ("num_queue_reqs", "gauge", s["queued"]),
            ("num_paused_reqs", "gauge", s["running"] if s["paused"] else 0),
            ("generation_tokens_total", "counter", c["generation_tokens"]),
            ("prompt_tokens_total", "counter", c["prompt_tokens"]),
            ("num_requests_total", "counter", c["requests"]),
            ("num_aborted_requests_total", "counter", c["aborted"]),
        ):
            lines += [f"# TYPE sglang:{metric} {kind}", f'sglang:{metric}{{model_name="{name}"}} {value}']
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


class _SchemaError(ValueError):
    pass


@dataclass
class ServerHandle:
    """An engine served from a background thread (tests, benchmarks, local demo)."""

    url: str
    engine: EmbeddedEngine
    _loop: asyncio.AbstractEventLoop
    _runner: web.AppRunner
    _thread: threading.Thread

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        fut.result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


def serve_in_thread(args: EngineArgs) -> ServerHandle:
    """Start the engine's HTTP server on its own event loop thread; ``port=0`` picks a free port."""
    engine = EmbeddedEngine(args)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(engine.app(), access_log=None)
    started = threading.Event()
    box: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, args.host, args.port)
        loop.run_until_complete(site.start())
        box["port"] = site._server.sockets[0].getsockname()[1]
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="embedded-engine-http", daemon=True)
    thread.start()
    started.wait(timeout=60)
    return ServerHandle(f"http://{args.host}:{box['port']}", engine, loop, runner, thread)


def parse_args(argv: list[str] | None = None) -> EngineArgs:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-path", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--weight-version", default="default")
    p.add_argument("--random-seed", type=int, default=0)
    p.add_argument("--context-length", type=int, default=None)
    p.add_argument("--max-running-requests", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--api-key", default=None)
    p.add_argument("--served-model-name", default=None)
    p.add_argument("--enable-deterministic-inference", action="store_true")
    p.add_argument("--load-format", default="auto", choices=["auto", "dummy"])
    known, unknown = p.parse_known_args(argv)
    if unknown:
        log.warning("ignoring SGLang arguments the embedded engine does not implement: %s", unknown)
    return EngineArgs(**vars(known))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    engine = EmbeddedEngine(args)
    log.info("embedded engine serving %s on http://%s:%d", args.model_path, args.host, args.port)
    web.run_app(engine.app(), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
