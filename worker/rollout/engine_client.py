"""Async client for SGLang's native HTTP API (sglang-api.md), used for real SGLang and the embedded engine.

Only idempotent calls are retried (health, info, abort, pause/continue, flush, disk and version updates);
``/generate`` is never resent, because a duplicate would double-count samples: the caller requeues.
Every failure becomes an :class:`EngineHTTPError` carrying the engine's own message.

The transport is aiohttp: a rollout sends tens of concurrent ``/generate`` calls per engine, and on a
2-core machine httpx's connection pool spent 0.3-0.6 s per 32-request wave where aiohttp spent
~0.02 s (measured with the embedded engine; issue 15).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from kuberl.errors import EngineError

if TYPE_CHECKING:
    import torch

FINISH_TYPES = ("stop", "length", "abort")


class EngineHTTPError(EngineError):
    """An engine call failed. ``retryable`` is true when the engine looks down (connection, 502-504)."""

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        self.url = url
        self.status = status
        self.retryable = status is None or status in (502, 503, 504)
        where = f"{url} answered {status}" if status is not None else f"{url} unreachable"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class GenerateOutput:
    """One ``/generate`` result, with tokens and behaviour logprobs taken from output_token_logprobs."""

    rid: str | None
    output_ids: list[int]
    logprobs: list[float]  # (R,) engine logprob of each generated token
    finish_reason: dict[str, Any]
    weight_version: str | None
    weight_versions: list[dict[str, Any]] = field(default_factory=list)  # spans, if weights changed
    text: str = ""
    prompt_tokens: int | None = None
    input_logprobs: list[float | None] | None = None
    meta_info: dict[str, Any] = field(default_factory=dict)

    @property
    def finish_type(self) -> str:
        return str(self.finish_reason.get("type"))

    @classmethod
    def from_json(cls, body: dict[str, Any], url: str = "") -> GenerateOutput:
        """Parse a single-request response; checks that logprob tokens agree with ``output_ids``."""
        meta = body.get("meta_info") or {}
        reason = meta.get("finish_reason") or {}
        if isinstance(reason, str):  # very old servers sent a bare string
            reason = {"type": reason}
        if reason.get("type") not in FINISH_TYPES:
            raise EngineHTTPError(f"unexpected finish_reason {reason!r}", url, 200)
        triples = meta.get("output_token_logprobs")
        output_ids = [int(t) for t in body.get("output_ids") or []]
        logprobs: list[float] = []
        if triples is not None:
            tokens = [int(e[1]) for e in triples]
            if output_ids and tokens != output_ids:
                raise EngineHTTPError(
                    f"output_token_logprobs tokens {tokens[:8]}... disagree with output_ids "
                    f"{output_ids[:8]}...", url, 200)
            output_ids = output_ids or tokens
            logprobs = [float(e[0]) for e in triples]
        inputs = meta.get("input_token_logprobs")
        version = meta.get("weight_version")
        return cls(
            rid=meta.get("id"),
            output_ids=output_ids,
            logprobs=logprobs,
            finish_reason=reason,
            weight_version=None if version is None else str(version),
            weight_versions=[_span(s) for s in meta.get("weight_versions") or []],
            text=body.get("text") or "",
            prompt_tokens=meta.get("prompt_tokens"),
            input_logprobs=None if inputs is None else [e[0] for e in inputs],
            meta_info=meta,
        )


def context_length_from(server_info: dict[str, Any], models: dict[str, Any],
                        model_config: dict[str, Any] | None = None) -> int | None:
    """Pure: the first context length given by /server_info, /v1/models or the model config."""
    if server_info.get("context_length") is not None:
        return int(server_info["context_length"])
    lengths = [m.get("max_model_len") for m in models.get("data") or []]
    if lengths and all(n is not None for n in lengths):
        return min(int(n) for n in lengths)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        if (model_config or {}).get(key) is not None:
            return int(model_config[key])  # type: ignore[index]
    return None


def _model_config(model_path: str | None) -> dict[str, Any] | None:
    """``config.json`` of a local model directory, or None (hub names and missing files)."""
    if not model_path:
        return None
    path = Path(model_path) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _span(span: Any) -> dict[str, Any]:
    """A weight-version span as ``{"version", "start", "end"}`` (some SGLang builds send triples)."""
    if isinstance(span, dict):
        return {"version": str(span["version"]), "start": int(span["start"]), "end": int(span["end"])}
    version, start, end = span
    return {"version": str(version), "start": int(start), "end": int(end)}


@dataclass(frozen=True)
class EngineResponse:
    """An answer read whole (status and body), so callers never hold a live connection."""

    status_code: int
    content: bytes
    reason_phrase: str = ""

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def error_message(response: EngineResponse) -> str:
    """The human message inside any of SGLang's error shapes (sglang-api.md §1)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, ValueError):
        return response.text.strip() or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if body.get("message"):
            return str(body["message"])
    return json.dumps(body)[:500]


class EngineClient:
    """One engine's URL. Pass ``session`` to share a connection pool among many engines (the caller
    closes it); otherwise the client opens its own on first use, in the running event loop."""

    sends_batches = True  # SGLang takes a batch of input_ids in one /generate (generate_batch)

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff_s = backoff_s
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._own = session is None
        self._session = session
        self._loop: asyncio.AbstractEventLoop | None = None

    def _client(self) -> aiohttp.ClientSession:
        """The session, (re)opened in the running loop: a driver runs each stage in its own asyncio.run,
        and a session cannot outlive the loop it was opened in."""
        loop = asyncio.get_running_loop()
        if self._own and self._session is not None and self._loop is not loop:
            # Used from a new loop without aclose() in the old one (callers should close in the loop that
            # used it, as the driver does): mark that session closed; if its loop is already closed, its
            # idle sockets are left to the garbage collector.
            with contextlib.suppress(Exception):
                self._session.connector._close()  # type: ignore[union-attr]  # aiohttp's sync close
            self._session = None
        if self._session is None:
            # Idle connections expire before uvicorn's 5 s keep-alive: reusing one the server is closing
            # fails a /generate with "server disconnected", which must not be resent (samples would double).
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=2.0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
            self._loop = loop
        return self._session

    async def aclose(self) -> None:
        if self._own and self._session is not None:
            if self._loop is asyncio.get_running_loop():
                await self._session.close()
            else:
                with contextlib.suppress(Exception):
                    self._session.connector._close()  # type: ignore[union-attr]
            self._session = None

    async def __aenter__(self) -> EngineClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- transport -------------------------------------------------------------------------
    async def _request(
        self, method: str, path: str, body: Any = None, idempotent: bool = False,
        ok: tuple[int, ...] = (200,), params: dict[str, Any] | None = None,
    ) -> EngineResponse:
        attempts = 1 + (self.retries if idempotent else 0)
        last: EngineHTTPError | None = None
        for attempt in range(attempts):
            try:
                async with self._client().request(
                    method, self.url + path, json=body, headers=self._headers, params=params
                ) as raw:
                    resp = EngineResponse(raw.status, await raw.read(), raw.reason or "")
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                last = EngineHTTPError(f"{type(e).__name__}: {e}", self.url + path)
            else:
                if resp.status_code in ok:
                    return resp
                last = EngineHTTPError(error_message(resp), self.url + path, resp.status_code)
                if not last.retryable:
                    raise last
            if attempt + 1 < attempts:
                await asyncio.sleep(self.backoff_s * 2**attempt)
        assert last is not None
        raise last

    async def _post_ok(self, path: str, body: dict[str, Any], idempotent: bool) -> dict[str, Any]:
        """POST a weight/control call whose answer is ``{"success": bool, "message": ...}``."""
        data = (await self._request("POST", path, body, idempotent=idempotent)).json()
        if isinstance(data, dict) and data.get("success") is False:
            raise EngineHTTPError(str(data.get("message")), self.url + path, 200)
        return data

    # ---- generation ------------------------------------------------------------------------
    async def generate(
        self,
        input_ids: list[int],
        sampling_params: dict[str, Any],
        rid: str | None = None,
        return_logprob: bool = True,
        logprob_start_len: int | None = None,
    ) -> GenerateOutput:
        """One sample; an abort comes back as a normal output with finish type ``abort``."""
        body: dict[str, Any] = {
            "input_ids": list(input_ids), "sampling_params": sampling_params,
            "return_logprob": return_logprob,
        }
        if rid is not None:
            body["rid"] = rid
        if logprob_start_len is not None:
            body["logprob_start_len"] = logprob_start_len
        resp = await self._request("POST", "/generate", body)
        return GenerateOutput.from_json(resp.json(), self.url)

    async def generate_batch(
        self,
        input_ids: list[list[int]],
        sampling_params: list[dict[str, Any]],
        rids: list[str],
        return_logprob: bool = True,
    ) -> list[GenerateOutput]:
        """Several samples in one request, SGLang's batch form (sglang-api.md §2): ``input_ids`` a list
        of lists, one ``rid`` and one ``sampling_params`` per item; the answer is a list in order.
        Each item can be aborted by its own rid and then comes back with finish type ``abort``."""
        if not (len(input_ids) == len(sampling_params) == len(rids)) or not rids:
            raise ValueError(f"a batch needs one sampling_params and one rid per input: got "
                             f"{len(input_ids)} inputs, {len(sampling_params)} params, {len(rids)} rids")
        body: dict[str, Any] = {
            "input_ids": [list(ids) for ids in input_ids], "sampling_params": list(sampling_params),
            "rid": list(rids), "return_logprob": return_logprob,
        }
        data = (await self._request("POST", "/generate", body)).json()
        if not isinstance(data, list) or len(data) != len(rids):
            raise EngineHTTPError(f"a batch of {len(rids)} came back as "
                                  f"{type(data).__name__} of {len(data) if isinstance(data, list) else 1}",
                                  self.url + "/generate", 200)
        return [GenerateOutput.from_json(item, self.url) for item in data]

    async def abort(self, rid: str | None = None, abort_all: bool = False) -> None:
        """Abort the request with exactly this rid (or all). SGLang 0.5.14 answers 200 either way and
        drops a rid it has not registered yet, so the caller re-sends until the request came back."""
        await self._request("POST", "/abort_request", {"rid": rid or "", "abort_all": abort_all},
                            idempotent=True)

    # ---- health and info -------------------------------------------------------------------
    async def health(self) -> bool:
        try:
            await self._request("GET", "/health")
        except EngineHTTPError:
            return False
        return True

    async def health_generate(self) -> bool:
        try:
            await self._request("GET", "/health_generate")
        except EngineHTTPError:
            return False
        return True

    async def wait_ready(self, timeout_s: float = 600.0, interval_s: float = 0.5) -> None:
        """Poll ``/health_generate`` until it answers 200 (engine started and able to generate)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not await self.health_generate():
            if asyncio.get_running_loop().time() > deadline:
                raise EngineHTTPError(f"not ready after {timeout_s:.0f} s", self.url + "/health_generate")
            await asyncio.sleep(interval_s)

    async def model_info(self) -> dict[str, Any]:
        return (await self._request("GET", "/model_info", idempotent=True)).json()

    async def server_info(self) -> dict[str, Any]:
        return (await self._request("GET", "/server_info", idempotent=True)).json()

    async def models(self) -> dict[str, Any]:
        return (await self._request("GET", "/v1/models", idempotent=True)).json()

    async def context_length(self, model_path: str | None = None) -> int | None:
        """The engine's context length in tokens (prompt + response).

        SGLang's ``/server_info`` echoes the command line, so ``context_length`` is null unless
        ``--context-length`` was given; then ``/v1/models``' ``max_model_len``, then the model
        config's ``max_position_embeddings`` (``model_path``, a local directory) answer instead.
        """
        info = await self.server_info()
        try:
            models = await self.models()
        except EngineHTTPError:
            models = {}
        return context_length_from(info, models, _model_config(model_path))

    async def get_weights_by_name(self, name: str, truncate_size: int = 100) -> Any:
        body = {"name": name, "truncate_size": truncate_size}
        return (await self._request("POST", "/get_weights_by_name", body, idempotent=True)).json()

    # ---- control ---------------------------------------------------------------------------
    async def flush_cache(self) -> bool:
        """True if flushed; False if the engine refused because requests are running (400)."""
        try:
            await self._request("POST", "/flush_cache", idempotent=True)
        except EngineHTTPError as e:
            if e.status == 400:
                return False
            raise
        return True

    async def pause(self, mode: str = "abort") -> None:
        await self._request("POST", "/pause_generation", {"mode": mode}, idempotent=True)

    async def continue_generation(self) -> None:
        await self._request("POST", "/continue_generation", {}, idempotent=True)

    async def update_weights_from_disk(
        self, model_path: str, weight_version: str | None = None, abort_all_requests: bool = False
    ) -> dict[str, Any]:
        body = {"model_path": model_path, "weight_version": weight_version,
                "abort_all_requests": abort_all_requests, "flush_cache": True}
        return await self._post_ok("/update_weights_from_disk", body, idempotent=True)

    async def update_weights_from_tensor(
        self, named_tensors: list[tuple[str, torch.Tensor]], weight_version: str | None = None,
        abort_all_requests: bool = False,
    ) -> dict[str, Any]:
        """Embedded-engine form (torch.save bytes, see tensor_payload); real SGLang wants IPC handles."""
        # torch only here: the engine host actor imports this module and must start fast (8 s with torch)
        from kuberl.worker.tensor_payload import encode_named_tensors

        body = {"serialized_named_tensors": [encode_named_tensors(named_tensors)],
                "load_format": None, "flush_cache": True, "weight_version": weight_version,
                "abort_all_requests": abort_all_requests}
        return await self._post_ok("/update_weights_from_tensor", body, idempotent=False)

    async def init_weights_update_group(
        self, master_address: str, master_port: int, rank_offset: int, world_size: int,
        group_name: str = "weight_update_group", backend: str = "nccl",
    ) -> dict[str, Any]:
        """Blocks until every rank has joined: call it concurrently with the trainer's own join."""
        body = {"master_address": master_address, "master_port": master_port,
                "rank_offset": rank_offset, "world_size": world_size, "group_name": group_name,
                "backend": backend}
        return await self._post_ok("/init_weights_update_group", body, idempotent=False)

    async def update_weights_from_distributed(
        self, names: list[str], dtypes: list[str], shapes: list[list[int]],
        weight_version: str | None = None, group_name: str = "weight_update_group",
    ) -> dict[str, Any]:
        """Announce one bucket; the trainer broadcasts the tensors from rank 0 meanwhile."""
        body = {"names": names, "dtypes": dtypes, "shapes": shapes, "group_name": group_name,
                "weight_version": weight_version, "flush_cache": True, "load_format": None}
        return await self._post_ok("/update_weights_from_distributed", body, idempotent=False)

    async def destroy_weights_update_group(self, group_name: str = "weight_update_group") -> None:
        await self._post_ok("/destroy_weights_update_group", {"group_name": group_name},
                            idempotent=True)

    async def update_weight_version(self, new_version: str, abort_all_requests: bool = True) -> None:
        await self._post_ok("/update_weight_version",
                            {"new_version": new_version, "abort_all_requests": abort_all_requests},
                            idempotent=True)
