"""Engine health: detect a dead rollout engine, replace it behind the router, fail after bounded tries.

The supervisor probes each engine's ``/health``; a dead one is taken out of the router, restarted
through the ``restart`` callback (the driver restarts its Ray-hosted process), given the current weights
through ``on_replaced``, and put back. Each engine may be replaced ``max_restarts`` times; one more
failure ends the job with an :class:`EngineFailedError` instead of retrying forever. Samples that were
in flight on the dead engine come back FAILED and the rollout collector requeues them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from kuberl.errors import EngineError
from kuberl.worker.rollout.engine_client import EngineClient
from kuberl.worker.rollout.router import Router

log = logging.getLogger(__name__)

MAX_RESTARTS = 3  # per engine and job: a crash loop is a bug to report, not to retry forever
PROBE_TIMEOUT_S = 10.0


class EngineFailedError(EngineError):
    """A rollout engine died more often than the restart budget allows."""


class EngineSupervisor:
    """Owns the current engine URLs; ``check`` replaces dead engines, one repair at a time."""

    def __init__(
        self,
        urls: list[str],
        restart: Callable[[int], Awaitable[str]],
        router: Router | None = None,
        on_replaced: Callable[[int, str], Awaitable[None]] | None = None,
        max_restarts: int = MAX_RESTARTS,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
    ) -> None:
        self.urls = list(urls)
        self.restart = restart
        self.router = router
        self.on_replaced = on_replaced
        self.max_restarts = max_restarts
        self.probe_timeout_s = probe_timeout_s
        self.restarts = [0] * len(urls)
        self.replaced_total = 0
        self._lock = asyncio.Lock()

    async def alive(self, url: str) -> bool:
        """One ``/health`` probe (no retries): 200 within the timeout means alive."""
        async with EngineClient(url, retries=0, timeout=self.probe_timeout_s) as client:
            return await client.health()

    async def check(self) -> list[str]:
        """Replace every engine that does not answer; return the current URLs.

        Callers that saw a failure call this concurrently; the lock makes them wait for one repair
        instead of each restarting the same engine.
        """
        async with self._lock:
            states = await asyncio.gather(*(self.alive(u) for u in self.urls))
            for index, ok in enumerate(states):
                if not ok:
                    await self._replace(index)
            return list(self.urls)

    async def _replace(self, index: int) -> None:
        old = self.urls[index]
        if self.restarts[index] >= self.max_restarts:
            raise EngineFailedError(
                f"rollout engine {index} ({old}) stopped answering /health again after "
                f"{self.restarts[index]} restarts; giving up. Its log (engine-{index}.log in the run "
                "directory) says why; typical causes are GPU memory (lower spec.sglang.serverArgs."
                "memFractionStatic) or a model the engine cannot load"
            )
        self.restarts[index] += 1
        log.warning("rollout engine %d at %s is down: restart %d/%d", index, old,
                    self.restarts[index], self.max_restarts)
        if self.router is not None:
            await self.router.remove_worker(old)
        try:
            new = await self.restart(index)
        except EngineError as e:
            raise EngineFailedError(f"rollout engine {index} could not be restarted: {e}") from e
        self.urls[index] = new
        if self.on_replaced is not None:
            await self.on_replaced(index, new)
        if self.router is not None:
            await self.router.add_worker(new)
            await self.router.wait_workers(self.urls, gone=[old] if old != new else None)
        self.replaced_total += 1
        log.warning("rollout engine %d replaced: %s -> %s", index, old, new)

    async def watch(self, interval_s: float = 5.0) -> None:
        """Check periodically until cancelled (runs beside a rollout)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.check()
