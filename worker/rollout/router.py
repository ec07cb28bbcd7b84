"""Talking to the smg router: generate through it, control every engine directly.

smg 1.13 routes ``/generate`` but answers 404 for ``abort_request``, ``pause_generation`` and the
weight-update calls (sglang-api.md §8), so control goes to each worker URL listed by ``GET /workers``.
"""

from __future__ import annotations

from typing import Any

import httpx

from kuberl.worker.rollout.balancer import EngineBalancer
from kuberl.worker.rollout.engine_client import EngineClient, GenerateOutput


class RouterClient(EngineBalancer):
    """Generation through the router URL; aborts, pauses and weight updates fanned out to engines."""

    def __init__(self, router_url: str, engines: list[EngineClient],
                 api_key: str | None = None) -> None:
        super().__init__(engines)
        self.router = EngineClient(router_url, api_key=api_key)

    @classmethod
    async def connect(cls, router_url: str, api_key: str | None = None) -> RouterClient:
        """Read the router's worker list and build a client with one EngineClient per worker."""
        urls = await worker_urls(router_url)
        return cls(router_url, [EngineClient(u, api_key=api_key) for u in urls], api_key)

    async def generate(
        self, input_ids: list[int], sampling_params: dict[str, Any], rid: str | None = None,
        return_logprob: bool = True, logprob_start_len: int | None = None,
    ) -> GenerateOutput:
        return await self.router.generate(input_ids, sampling_params, rid, return_logprob,
                                          logprob_start_len)

    async def abort(self, rid: str | None = None, abort_all: bool = False) -> None:
        """The router does not say where a rid went: send the exact rid to every engine (the ones
        that do not hold it drop it). ``abort_all`` must be asked for explicitly."""
        if rid is None and not abort_all:
            return
        await self._each(lambda e: e.abort(rid, abort_all=abort_all))

    async def aclose(self) -> None:
        await super().aclose()
        await self.router.aclose()


async def worker_urls(router_url: str) -> list[str]:
    """URLs of the workers the router currently knows (``GET /workers``)."""
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(router_url.rstrip("/") + "/workers")
        resp.raise_for_status()
        return [w["url"] for w in resp.json().get("workers", [])]
