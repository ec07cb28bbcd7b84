"""Client-side least-loaded balancing over several engines, with rid -> engine affinity for aborts.

The alternative to the smg router when no router runs (local runs, tests) or when exact per-engine
control is wanted. Engines that fail with a connection error or 502-504 leave the rotation until
``restore`` puts them back; their in-flight samples are the caller's to requeue.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from kuberl.errors import EngineError
from kuberl.worker.rollout.engine_client import EngineClient, EngineHTTPError, GenerateOutput


class EngineBalancer:
    """Same generate/abort/control surface as :class:`EngineClient`, spread over many engines."""

    sends_batches = True  # generate_batch goes to one engine, its rids tracked there

    def __init__(self, engines: list[EngineClient]) -> None:
        if not engines:
            raise EngineError("the balancer needs at least one engine URL")
        self.engines = list(engines)
        self.in_flight: dict[str, int] = {e.url: 0 for e in engines}
        self.down: set[str] = set()
        self._owner: dict[str, EngineClient] = {}
        self._tie = itertools.count()

    @property
    def healthy(self) -> list[EngineClient]:
        return [e for e in self.engines if e.url not in self.down]

    def pick(self) -> EngineClient:
        """The healthy engine with the fewest requests in flight (ties rotate)."""
        live = self.healthy
        if not live:
            raise EngineError(f"no healthy rollout engine (down: {sorted(self.down)})")
        low = min(self.in_flight[e.url] for e in live)
        ties = [e for e in live if self.in_flight[e.url] == low]
        return ties[next(self._tie) % len(ties)]

    async def generate(
        self, input_ids: list[int], sampling_params: dict[str, Any], rid: str | None = None,
        return_logprob: bool = True, logprob_start_len: int | None = None,
    ) -> GenerateOutput:
        engine = self.pick()
        self.in_flight[engine.url] += 1
        if rid is not None:
            self._owner[rid] = engine
        try:
            return await engine.generate(input_ids, sampling_params, rid, return_logprob,
                                         logprob_start_len)
        except EngineHTTPError as e:
            if e.retryable:
                self.down.add(engine.url)
            raise
        finally:
            self.in_flight[engine.url] -= 1
            if rid is not None:
                self._owner.pop(rid, None)

    async def generate_batch(
        self, input_ids: list[list[int]], sampling_params: list[dict[str, Any]], rids: list[str],
        return_logprob: bool = True,
    ) -> list[GenerateOutput]:
        """One batched request to the least-loaded engine; every rid of it aborts on that engine."""
        engine = self.pick()
        self.in_flight[engine.url] += len(rids)
        for rid in rids:
            self._owner[rid] = engine
        try:
            return await engine.generate_batch(input_ids, sampling_params, rids, return_logprob)
        except EngineHTTPError as e:
            if e.retryable:
                self.down.add(engine.url)
            raise
        finally:
            self.in_flight[engine.url] -= len(rids)
            for rid in rids:
                self._owner.pop(rid, None)

    async def abort(self, rid: str | None = None, abort_all: bool = False) -> None:
        """Abort one exact rid on the engine it was sent to, or (explicitly) everything everywhere.

        A rid that already came back has no owner and needs no abort."""
        if abort_all:
            await self._each(lambda e: e.abort(abort_all=True))
            return
        engine = self._owner.get(rid) if rid else None
        if engine is not None:
            await engine.abort(rid)

    async def context_length(self, model_path: str | None = None) -> int | None:
        """The smallest context length of the healthy engines (a request must fit on any of them)."""
        found = [n for n in await self._each(lambda e: e.context_length(model_path)) if n is not None]
        return min(found) if found else None

    async def pause(self, mode: str = "abort") -> None:
        await self._each(lambda e: e.pause(mode))

    async def continue_generation(self) -> None:
        await self._each(lambda e: e.continue_generation())

    async def flush_cache(self) -> bool:
        return all(await self._each(lambda e: e.flush_cache()))

    async def update_weights_from_disk(self, model_path: str, weight_version: str | None = None,
                                       abort_all_requests: bool = False) -> None:
        await self._each(lambda e: e.update_weights_from_disk(model_path, weight_version,
                                                               abort_all_requests))

    async def update_weights_from_tensor(self, named_tensors, weight_version: str | None = None,
                                         abort_all_requests: bool = False) -> None:
        await self._each(lambda e: e.update_weights_from_tensor(named_tensors, weight_version,
                                                                abort_all_requests))

    async def restore(self) -> list[str]:
        """Probe engines marked down; put back those whose /health_generate answers. Returns them."""
        back = [e.url for e in self.engines if e.url in self.down and await e.health_generate()]
        self.down.difference_update(back)
        return back

    async def _each(self, call: Callable[[EngineClient], Awaitable[Any]]) -> list[Any]:
        return list(await asyncio.gather(*(call(e) for e in self.healthy)))

    async def aclose(self) -> None:
        await asyncio.gather(*(e.aclose() for e in self.engines))
