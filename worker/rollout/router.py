"""The smg router: start it, keep its worker list current, generate through it, control engines directly.

smg 1.13 routes ``/generate`` but answers 404 for ``abort_request``, ``pause_generation`` and the
weight-update calls (sglang-api.md §8), so control goes to each engine URL. When an engine dies under a
request, smg answers 500 ``call_upstream_request_error`` (measured with smg 1.13 and a SIGKILLed
embedded engine): the client turns that into an engine-down error, asks the supervisor to replace the
engine, and the caller requeues the sample.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from kuberl.errors import EngineError
from kuberl.worker.engine.launcher import ManagedProcess, router_command
from kuberl.worker.net import free_port
from kuberl.worker.rollout.balancer import EngineBalancer
from kuberl.worker.rollout.engine_client import EngineClient, EngineHTTPError, GenerateOutput

DEFAULT_POLICY = "cache_aware"
# The router's own health checks only take a failed engine out of rotation; the driver's supervisor
# replaces it. A short interval keeps the window in which smg still routes to a dead engine small.
HEALTH_CHECK_INTERVAL_S = 2


def find_smg() -> str:
    """The ``smg`` executable (PATH, then next to this interpreter)."""
    found = shutil.which("smg") or str(Path(sys.executable).parent / "smg")
    if not Path(found).exists():
        raise EngineError("the smg router is not installed: the worker image needs `pip install "
                          "smg==1.13.0` (locally: the dev extra, `hack/setup-python.sh`)")
    return found


def router_argv(router_args: list[str], worker_urls: list[str], port: int, *, host: str,
                request_timeout_secs: int, prometheus_port: int | None, smg: str = "smg") -> list[str]:
    """The smg command line: kuberl's defaults, then ``spec.sglang.routerArgs`` (which may set the policy).

    Pure. ``--policy`` and the health-check interval come from routerArgs when given there, so no flag
    appears twice.
    """
    extra = list(router_args)
    policy = DEFAULT_POLICY
    if "--policy" in extra:
        i = extra.index("--policy")
        if i + 1 >= len(extra):
            raise EngineError("spec.sglang.routerArgs.policy needs a value (e.g. round_robin)")
        policy = extra[i + 1]
        del extra[i:i + 2]
    if "--health-check-interval-secs" not in extra:
        extra += ["--health-check-interval-secs", str(HEALTH_CHECK_INTERVAL_S)]
    argv = router_command(worker_urls, port, host=host, policy=policy,
                          request_timeout_secs=request_timeout_secs, extra=extra,
                          prometheus_port=prometheus_port)
    argv[0] = smg
    return argv


class Router:
    """A running smg process and its worker-admin API (``GET/POST /workers``, ``DELETE /workers/{id}``)."""

    def __init__(self, process: ManagedProcess) -> None:
        self.process = process
        self.url = process.url

    @classmethod
    async def start(cls, router_args: list[str], worker_urls: list[str], *,
                    request_timeout_secs: int = 14400, log_path: str | None = None,
                    host: str = "127.0.0.1", timeout_s: float = 120.0) -> Router:
        """Launch smg in front of ``worker_urls`` and wait until it lists all of them healthy."""
        port = free_port()
        argv = router_argv(router_args, worker_urls, port, host=host,
                           request_timeout_secs=request_timeout_secs, prometheus_port=free_port(),
                           smg=find_smg())
        router = cls(ManagedProcess(argv, f"http://127.0.0.1:{port}", log_path=log_path))
        try:
            await router.process.wait_ready(timeout_s, path="/health")
            await router.wait_workers(worker_urls, timeout_s)
        except BaseException:
            router.stop()
            raise
        return router

    async def workers(self) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.get(self.url + "/workers")
            resp.raise_for_status()
            return list(resp.json().get("workers", []))

    async def add_worker(self, url: str) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            resp = await client.post(self.url + "/workers", json={"url": url})
        if resp.status_code >= 300:
            raise EngineError(f"the router refused worker {url}: {resp.status_code} {resp.text[:300]}")

    async def remove_worker(self, url: str) -> None:
        """Remove every registration of ``url`` (no-op when the router does not know it)."""
        ids = [w["id"] for w in await self.workers() if w.get("url") == url]
        async with httpx.AsyncClient(timeout=10) as client:
            for wid in ids:
                resp = await client.delete(f"{self.url}/workers/{wid}")
                if resp.status_code >= 300 and resp.status_code != 404:
                    raise EngineError(f"the router did not remove {url}: {resp.status_code} "
                                      f"{resp.text[:300]}")

    async def wait_workers(self, urls: list[str], timeout_s: float = 120.0,
                           gone: list[str] | None = None) -> None:
        """Wait until the router lists exactly ``urls`` healthy (and none of ``gone``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        listed: dict[str, bool] = {}
        while loop.time() < deadline:
            if self.process.proc.poll() is not None:
                raise EngineError(f"the smg router exited with code {self.process.proc.returncode}")
            listed = {w.get("url"): bool(w.get("is_healthy")) for w in await self.workers()}
            if all(listed.get(u) for u in urls) and not set(gone or []) & set(listed):
                return
            await asyncio.sleep(0.2)
        raise EngineError(f"the router did not list {urls} as healthy within {timeout_s:.0f} s "
                          f"(it lists {listed})")

    def stop(self) -> None:
        self.process.stop()


class RouterClient(EngineBalancer):
    """Generation through the router URL; aborts, pauses and weight updates fanned out to engines.

    ``on_engine_failure`` (the supervisor's check) runs when a request failed because an engine went
    away; it returns the current engine URLs, so later aborts reach the replacement.
    """

    # smg's handling of SGLang's batched /generate (per-item rids, a list back) is not verified, so
    # through the router every sample stays its own request.
    sends_batches = False

    def __init__(self, router_url: str, engines: list[EngineClient], api_key: str | None = None,
                 on_engine_failure: Callable[[], Awaitable[list[str]]] | None = None) -> None:
        super().__init__(engines)
        self.api_key = api_key
        self.router = EngineClient(router_url, api_key=api_key)
        self.on_engine_failure = on_engine_failure

    @classmethod
    async def connect(cls, router_url: str, api_key: str | None = None) -> RouterClient:
        """Read the router's worker list and build a client with one EngineClient per worker."""
        urls = await worker_urls(router_url)
        return cls(router_url, [EngineClient(u, api_key=api_key) for u in urls], api_key)

    async def generate(
        self, input_ids: list[int], sampling_params: dict[str, Any], rid: str | None = None,
        return_logprob: bool = True, logprob_start_len: int | None = None,
    ) -> GenerateOutput:
        try:
            return await self.router.generate(input_ids, sampling_params, rid, return_logprob,
                                              logprob_start_len)
        except EngineHTTPError as e:
            if not (e.retryable or is_upstream_failure(e)):
                raise
            if self.on_engine_failure is not None:
                await self._set_engines(await self.on_engine_failure())
            raise EngineHTTPError(f"engine behind the router failed: {e}", e.url, 502) from e

    async def abort(self, rid: str | None = None, abort_all: bool = False) -> None:
        """The router does not say where a rid went: send the exact rid to every engine (the ones
        that do not hold it drop it). ``abort_all`` must be asked for explicitly."""
        if rid is None and not abort_all:
            return
        await self._each(lambda e: e.abort(rid, abort_all=abort_all))

    async def _each(self, call):  # an engine that died meanwhile must not fail an abort fan-out
        results = await asyncio.gather(*(call(e) for e in self.healthy), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        for err in errors:
            if not (isinstance(err, EngineHTTPError) and err.retryable):
                raise err
        return [r for r in results if not isinstance(r, BaseException)]

    async def _set_engines(self, urls: list[str]) -> None:
        if sorted(urls) == sorted(e.url for e in self.engines):
            return
        old = self.engines
        self.engines = [next((e for e in old if e.url == u), None) or EngineClient(u, api_key=self.api_key)
                        for u in urls]
        self.in_flight = {e.url: self.in_flight.get(e.url, 0) for e in self.engines}
        self.down.clear()
        await asyncio.gather(*(e.aclose() for e in old if e not in self.engines))

    async def aclose(self) -> None:
        await super().aclose()
        await self.router.aclose()


def is_upstream_failure(error: EngineHTTPError) -> bool:
    """A 5xx from the router: the engine it picked failed (smg says 500 ``call_upstream_request_error``
    for a dead one). Worth a health check and a retry elsewhere, unlike a 4xx (a bad request)."""
    return error.status is not None and error.status >= 500


async def worker_urls(router_url: str) -> list[str]:
    """URLs of the workers the router currently knows (``GET /workers``)."""
    async with httpx.AsyncClient(timeout=10) as client:
        resp = await client.get(router_url.rstrip("/") + "/workers")
        resp.raise_for_status()
        return [w["url"] for w in resp.json().get("workers", [])]
