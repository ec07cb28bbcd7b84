"""The embedded engine's step loop: one thread owns the model and batches all running requests.

Requests, aborts, pauses and weight updates arrive from the HTTP thread as commands; the loop applies
them between steps, so the model is only ever touched by this thread. Semantics follow SGLang 0.5.14 as
measured on a GPU (sglang-api.md sections 2-4, docs/rollout.md): exact-rid abort, partial output on
abort, pause modes, the writer-lock rule for weight updates, ``sampling_seed`` honoured only in
deterministic mode and ``stop_token_ids`` ignored under ``ignore_eos``.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from kuberl.worker.engine.kv_batch import KVBatch, prefill
from kuberl.worker.engine.sampling import SamplingParams, choose_tokens

ABORT_WAITING = "Abort in waiting queue"
ABORT_RUNNING = "Aborted"  # SGLang's FINISH_ABORT default; clients match on it


@dataclass
class GenerationRequest:
    """One sequence to generate; filled in by the scheduler thread."""

    rid: str
    input_ids: list[int]
    params: SamplingParams
    return_logprob: bool = False
    logprob_start_len: int = -1
    on_update: Callable[[GenerationRequest, bool], None] | None = None  # (req, finished)
    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    input_logprobs: list[float | None] = field(default_factory=list)
    finish_reason: dict[str, Any] | None = None
    weight_versions: list[dict[str, Any]] = field(default_factory=list)
    weight_version: str | None = None  # the engine's version when the request finished
    created: float = field(default_factory=time.monotonic)
    generator: torch.Generator | None = None

    def append(self, token: int, logprob: float, version: str) -> None:
        k = len(self.output_ids)
        self.output_ids.append(token)
        self.output_logprobs.append(logprob)
        if self.weight_versions and self.weight_versions[-1]["version"] == version:
            self.weight_versions[-1]["end"] = k + 1
        else:
            self.weight_versions.append({"version": version, "start": k, "end": k + 1})


@dataclass
class _Update:
    apply: Callable[[], None]
    version: str | None
    abort_all: bool
    done: Future


class Scheduler:
    """Owns the model; ``start()`` runs the loop in a daemon thread. All public methods are thread-safe."""

    def __init__(
        self,
        model: torch.nn.Module,
        eos_token_ids: set[int],
        decode_text: Callable[[list[int], bool], str] | None,
        weight_version: str = "default",
        max_running_requests: int = 256,
        max_prefill_tokens: int = 16384,
        seed: int = 0,
        admit_window_s: float = 0.05,
        deterministic: bool = False,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.eos_token_ids = eos_token_ids
        self.decode_text = decode_text
        self.weight_version = weight_version
        self.max_running = max_running_requests
        self.max_prefill_tokens = max_prefill_tokens
        self._rng = torch.Generator(device=self.device).manual_seed(seed)
        self.admit_window_s = admit_window_s
        # SGLang honours sampling_seed only with --enable-deterministic-inference
        self.deterministic = deterministic
        # SGLang's switch for logprobs before temperature scaling; same name, same default (off)
        self.original_logprobs = os.environ.get("SGLANG_RETURN_ORIGINAL_LOGPROB", "").lower() in (
            "1", "true", "yes")
        self._commands: deque[Callable[[], None]] = deque()
        self._wake = threading.Event()
        self._waiting: deque[GenerationRequest] = deque()
        self._rows: list[GenerationRequest] = []
        self._batch = KVBatch(self.device)
        self._updates: list[_Update] = []
        self._paused = False
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="embedded-engine-step", daemon=True)
        self.last_output_time = 0.0
        self.counters = {"generation_tokens": 0, "prompt_tokens": 0, "aborted": 0, "requests": 0,
                         "prefill_batches": 0, "decode_steps": 0}
        self.error: BaseException | None = None

    # ---- thread-safe API -------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join(timeout=10)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def stats(self) -> dict[str, int]:
        return {"running": len(self._rows), "queued": len(self._waiting), "paused": int(self._paused)}

    def submit(self, req: GenerationRequest) -> None:
        self._command(lambda: self._waiting.append(req))

    def abort(self, rid: str, abort_all: bool) -> None:
        """Abort the queued or running request with exactly this rid (or all of them).

        SGLang 0.5.14's front end drops any rid it does not hold, so a prefix aborts nothing.
        """
        if not abort_all and not rid:
            return
        self._command(lambda: self._abort(lambda r: abort_all or r.rid == rid))

    def pause(self, mode: str) -> Future:
        def run() -> None:
            if mode == "abort":
                self._abort(lambda r: True)
            self._paused = True

        return self.call(run)

    def resume(self) -> Future:
        return self.call(lambda: setattr(self, "_paused", False))

    def call(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the step thread between steps; the future carries its result or error."""
        fut: Future = Future()

        def run() -> None:
            try:
                fut.set_result(fn())
            except BaseException as e:  # delivered to the caller
                fut.set_exception(e)

        self._command(run)
        return fut

    def is_busy(self) -> Future:
        return self.call(lambda: bool(self._rows or self._waiting))

    def update_weights(self, apply: Callable[[], None], version: str | None, abort_all: bool) -> Future:
        """Queue a weight update under the writer lock: it runs once paused or idle."""
        upd = _Update(apply, version, abort_all, Future())
        self._command(lambda: self._updates.append(upd))
        return upd.done

    # ---- step thread -----------------------------------------------------------------------
    def _command(self, fn: Callable[[], None]) -> None:
        self._commands.append(fn)
        self._wake.set()

    def _loop(self) -> None:
        try:
            while not self._stopped:
                self._wake.clear()
                self._drain_commands()
                self._run_updates()
                if not self._paused and not self._updates:
                    self._admit()
                if self._rows and not self._paused:
                    self._decode()
                elif not self._commands:
                    self._wake.wait(timeout=0.5)
        except BaseException as e:  # surfaced by /health and to every pending request
            self.error = e
            for r in self._rows + list(self._waiting):
                self._finish(r, {"type": "abort", "message": f"engine failed: {e!r}",
                                 "status_code": 500, "err_type": "InternalError"})
            raise

    def _drain_commands(self) -> None:
        """Apply queued commands. While requests keep arriving (a rollout's burst), wait up to
        ``admit_window_s`` in short slices for the rest, so they are prefilled as one batch instead
        of each arrival costing a small prefill and partial-batch decode steps."""
        deadline = time.monotonic() + self.admit_window_s
        while True:
            arrived = False
            while self._commands:
                self._commands.popleft()()
                arrived = True
            if not (arrived and self._waiting) or time.monotonic() >= deadline:
                return
            self._wake.clear()
            if not self._wake.wait(timeout=0.002):  # nothing new within 2 ms: the burst is over
                return

    def _run_updates(self) -> None:
        while self._updates and (self._paused or not self._rows):
            upd = self._updates.pop(0)
            if upd.abort_all:
                self._abort(lambda r: True)
            try:
                upd.apply()
                if upd.version is not None:
                    self.weight_version = upd.version
                upd.done.set_result(None)
            except BaseException as e:
                upd.done.set_exception(e)

    def _abort(self, match: Callable[[GenerationRequest], bool]) -> None:
        for r in [r for r in self._waiting if match(r)]:
            self._waiting.remove(r)
            self._finish(r, _abort_reason(ABORT_WAITING))
        keep = []
        for i, r in enumerate(self._rows):
            if match(r):
                self._finish(r, _abort_reason(ABORT_RUNNING))
            else:
                keep.append(i)
        if len(keep) != len(self._rows):
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)

    def _finish(self, r: GenerationRequest, reason: dict[str, Any]) -> None:
        r.finish_reason = reason
        r.weight_version = self.weight_version
        if reason["type"] == "abort":
            self.counters["aborted"] += 1
        if r.on_update:
            r.on_update(r, True)

    def _generator(self, r: GenerationRequest) -> torch.Generator | None:
        """A request's own generator when it has a sampling_seed in deterministic mode; None shares
        the engine's (SGLang ignores the seed without --enable-deterministic-inference)."""
        if r.params.sampling_seed is None or not self.deterministic:
            return None
        return torch.Generator(device=self.device).manual_seed(int(r.params.sampling_seed))

    def _admit(self) -> None:
        new: list[GenerationRequest] = []
        tokens = 0
        while self._waiting and len(self._rows) + len(new) < self.max_running:
            nxt = self._waiting[0]
            if new and tokens + len(nxt.input_ids) > self.max_prefill_tokens:
                break
            new.append(self._waiting.popleft())
            tokens += len(nxt.input_ids)
        if not new:
            return
        self.counters["prefill_batches"] += 1
        full = any(r.return_logprob and r.logprob_start_len >= 0 for r in new)
        logits, cache, mask = prefill(self.model, [r.input_ids for r in new], self.device, full)
        for r in new:
            r.generator = self._generator(r)
            self.counters["prompt_tokens"] += len(r.input_ids)
            self.counters["requests"] += 1
        if full:
            self._input_logprobs(new, logits)
        last = logits[:, -1, :]  # (b, V)
        tokens_t, logprobs = self._choose(new, last)
        keep = [i for i, r in enumerate(new) if r.params.max_new_tokens > 0]
        for r in new:
            if r.params.max_new_tokens == 0:
                self._finish(r, {"type": "length", "length": 0})
        if not keep:
            return
        idx = torch.tensor(keep, device=self.device)
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, idx), layer.values.index_select(0, idx)
        self._batch.add(cache, mask.index_select(0, idx), tokens_t.index_select(0, idx.cpu()))
        self._rows.extend(new[i] for i in keep)
        self._after_sampling(
            [new[i] for i in keep], tokens_t[keep].tolist(), logprobs[keep].tolist(),
            first_row=len(self._rows) - len(keep),
        )

    def _input_logprobs(self, new: list[GenerationRequest], logits: torch.Tensor) -> None:
        """Prompt-token logprobs from position logprob_start_len on; position 0 has none (None)."""
        P = logits.shape[1]
        for i, r in enumerate(new):
            if not (r.return_logprob and r.logprob_start_len >= 0):
                continue
            n = len(r.input_ids)
            row = logits[i, P - n:, :].float()  # (n, V), row j predicts token j+1
            if not r.params.greedy:
                row = row / r.params.temperature
            lp = torch.log_softmax(row[:-1], dim=-1)
            nxt = torch.tensor(r.input_ids[1:], device=lp.device)
            per_token = [None, *lp.gather(1, nxt[:, None]).squeeze(1).tolist()]
            r.input_logprobs = per_token[r.logprob_start_len:]

    def _choose(self, rows: list[GenerationRequest], logits: torch.Tensor):
        banned = [
            (sorted((set() if r.params.ignore_eos else self.eos_token_ids) | set(r.params.stop_token_ids))
             if len(r.output_ids) < r.params.min_new_tokens else [])
            for r in rows
        ]
        tokens, logprobs = choose_tokens(
            logits, [r.params for r in rows], [r.generator for r in rows], banned, self._rng,
            self.original_logprobs,
        )
        return tokens.cpu(), logprobs.cpu()

    def _decode(self) -> None:
        self.counters["decode_steps"] += 1
        logits = self._batch.decode(self.model)  # (B, V)
        tokens, logprobs = self._choose(self._rows, logits)
        self._batch.next_tokens = tokens.to(self.device)
        self._after_sampling(self._rows, tokens.tolist(), logprobs.tolist(), first_row=0)

    def _after_sampling(
        self, rows: list[GenerationRequest], tokens: list[int], logprobs: list[float], first_row: int
    ) -> None:
        """Append each row's new token, finish rows that hit a stop condition, drop them from the batch."""
        self.last_output_time = time.monotonic()
        self.counters["generation_tokens"] += len(rows)
        finished: set[int] = set()
        for k, (r, tok, lp) in enumerate(zip(rows, tokens, logprobs, strict=True)):
            r.append(tok, lp, self.weight_version)
            reason = self._stop_reason(r, tok)
            if reason is not None:
                finished.add(first_row + k)
                self._finish(r, reason)
            elif r.on_update:
                r.on_update(r, False)
        if finished:
            keep = [i for i in range(len(self._rows)) if i not in finished]
            self._rows = [self._rows[i] for i in keep]
            self._batch.keep(keep)

    def _stop_reason(self, r: GenerationRequest, tok: int) -> dict[str, Any] | None:
        p = r.params
        if len(r.output_ids) >= p.min_new_tokens:
            # SGLang 0.5.14 checks stop_token_ids together with EOS, so ignore_eos disables both
            if not p.ignore_eos and (tok in p.stop_token_ids or tok in self.eos_token_ids):
                return {"type": "stop", "matched": tok}
            if p.stop and self.decode_text is not None:
                text = self.decode_text(r.output_ids, p.skip_special_tokens)
                for s in p.stop:
                    if s and s in text:
                        return {"type": "stop", "matched": s}
        if len(r.output_ids) >= p.max_new_tokens:
            return {"type": "length", "length": p.max_new_tokens}
        return None


def _abort_reason(message: str) -> dict[str, Any]:
    return {"type": "abort", "message": message, "status_code": None, "err_type": None}
