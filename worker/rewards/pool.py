"""Grade in worker processes with a per-sample deadline; a stuck worker is killed and replaced.

Graders run user-shaped inputs through sympy and parsers that can hang for minutes, and math-verify's
own timeouts only work in a main thread. So each job runs in a child process, the parent waits with a
deadline, a timeout scores 0, and the child is replaced (ecosystem-notes §7). Jobs name their
function by import path, so only strings and plain data cross the process boundary. This module
must stay light to import: children are spawned and import it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)


class GradingTimeout(Exception):
    """A job passed its deadline; its worker process was replaced."""


class GradingFailed(Exception):
    """The grading function raised; the message carries the child's exception."""


_LOAD = "__load__"
STARTUP_TIMEOUT_S = 300.0  # a fresh worker's interpreter start and imports (sympy) on a busy machine


def _child(conn: Connection) -> None:
    import importlib
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    cache: dict[str, Any] = {}
    while True:
        msg = conn.recv()
        if msg is None:
            return
        target, args = msg
        try:
            if target == _LOAD:  # import a grader before any deadline runs (start-up is not grading)
                (target,) = args
            fn = cache.get(target)
            if fn is None:
                module, _, attr = target.partition(":")
                fn = cache[target] = getattr(importlib.import_module(module), attr)
            conn.send(("ok", None if msg[0] == _LOAD else fn(*args)))
        except BaseException as e:
            conn.send(("err", f"{type(e).__name__}: {e}"))


@dataclass
class _Worker:
    proc: mp.process.BaseProcess
    conn: Connection
    loaded: set[str] = field(default_factory=set)  # graders already imported in this process


class GradingPool:
    """``await pool.run("pkg.mod:fn", *args, timeout_s=...)`` -> fn(*args) computed in a child."""

    def __init__(self, workers: int = 2, timeout_s: float = 10.0, start_method: str = "spawn"):
        self.size = max(1, workers)
        self.timeout_s = timeout_s
        self._ctx = mp.get_context(start_method)
        self._idle: asyncio.Queue[_Worker] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all: list[_Worker] = []
        self.replaced = 0

    def _spawn(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_child, args=(child,), daemon=True, name="kuberl-grader")
        proc.start()
        child.close()
        w = _Worker(proc, parent)
        self._all.append(w)
        return w

    def _ensure_started(self) -> asyncio.Queue[_Worker]:
        """The idle-worker queue of the running event loop (rebuilt if the pool moved loops)."""
        loop = asyncio.get_running_loop()
        if self._idle is None or self._loop is not loop:
            self._idle, self._loop = asyncio.Queue(), loop
            for w in self._all:
                self._idle.put_nowait(w)
            for _ in range(self.size - len(self._all)):
                self._idle.put_nowait(self._spawn())
        return self._idle

    async def run(self, target: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call ``target`` (``module:function``) in a worker; raises GradingTimeout / GradingFailed.

        The per-sample deadline covers the call only: a fresh worker first imports the grader under
        the much longer ``STARTUP_TIMEOUT_S``, so start-up on a loaded machine never scores a sample 0.
        """
        idle = self._ensure_started()
        worker = await idle.get()
        deadline = timeout_s or self.timeout_s
        try:
            if target not in worker.loaded:
                await self._exchange(worker, (_LOAD, (target,)), STARTUP_TIMEOUT_S, target)
                worker.loaded.add(target)
            status, value = await self._exchange(worker, (target, args), deadline, target)
        except (GradingTimeout, asyncio.CancelledError):
            self._replace(worker)
            raise
        except GradingFailed:
            idle.put_nowait(worker)  # the import failed; the process itself is fine
            raise
        idle.put_nowait(worker)
        if status == "err":
            raise GradingFailed(f"{target}: {value}")
        return value

    async def _exchange(self, worker: _Worker, msg: tuple[str, tuple[Any, ...]], timeout_s: float,
                        target: str) -> tuple[str, Any]:
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = worker.conn.fileno()
        try:
            worker.conn.send(msg)
            loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
            try:
                await asyncio.wait_for(ready, timeout_s)
            finally:
                loop.remove_reader(fd)
            status, value = worker.conn.recv()
        except (TimeoutError, EOFError, OSError) as e:
            raise GradingTimeout(f"{target} took longer than {timeout_s} s"
                                 if isinstance(e, TimeoutError) else f"{target}: worker died") from e
        if msg[0] == _LOAD and status == "err":
            raise GradingFailed(f"{target}: {value}")
        return status, value

    def _replace(self, worker: _Worker) -> None:
        worker.proc.kill()
        worker.proc.join(timeout=5)
        worker.conn.close()
        self._all.remove(worker)
        self.replaced += 1
        assert self._idle is not None
        self._idle.put_nowait(self._spawn())
        log.warning("replaced a grading worker (pid %s) after a timeout or crash", worker.proc.pid)

    def close(self) -> None:
        for w in self._all:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._all:
            w.proc.join(timeout=2)
            if w.proc.is_alive():
                w.proc.kill()
            w.conn.close()
        self._all.clear()
        self._idle = None

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._all if w.proc.pid is not None]


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))
