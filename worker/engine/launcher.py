"""Start rollout engines and the router as processes, and say where they listen.

In a cluster a rollout actor launches real SGLang (``python -m sglang.launch_server``, ``--tp-size``
= GPUs per engine, passthrough server arguments); locally it launches the embedded engine. Both give
an engine URL, and the same client and rollout code drive either. Command building is pure; the
:class:`ManagedProcess` shell runs a command and waits until its health endpoint answers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from kuberl.api.resolve import args_to_flags
from kuberl.errors import EngineError
from kuberl.worker.rollout.engine_client import EngineClient

EngineKind = Literal["sglang", "embedded"]

# Flags the launcher owns; passthrough server args may not set them (slime keeps a similar skip list).
RESERVED_FLAGS = frozenset(
    {"--model-path", "--tp-size", "--host", "--port", "--weight-version", "--random-seed"}
)


@dataclass(frozen=True)
class EngineSpec:
    """Everything needed to start one engine."""

    model_path: str
    port: int
    host: str = "127.0.0.1"
    kind: EngineKind = "embedded"
    tp_size: int = 1
    server_args: list[str] | dict[str, Any] = field(default_factory=list)  # flags or camelCase map
    weight_version: str = "default"
    random_seed: int = 0

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def passthrough_flags(server_args: list[str] | dict[str, Any]) -> list[str]:
    """camelCase map (``{"memFractionStatic": 0.7}``) or ready flags -> CLI flags; reserved ones refused."""
    flags = args_to_flags(server_args) if isinstance(server_args, dict) else list(server_args)
    clash = sorted(f for f in flags if f.split("=")[0] in RESERVED_FLAGS)
    if clash:
        raise EngineError(
            f"sglang server args {clash} are set by kuberl itself (model, parallelism, address, "
            "version, seed); remove them from spec.sglang.serverArgs"
        )
    return flags


DETERMINISTIC_FLAG = "--enable-deterministic-inference"


def seeded_sampling(server_args: list[str] | dict[str, Any]) -> bool:
    """Whether the job asks for seeded sampling: ``spec.sglang.serverArgs.enableDeterministicInference``
    (slime's ``--sglang-enable-deterministic-inference``). SGLang 0.5.14 honours ``sampling_seed`` only
    with that flag, so the driver sends seeds exactly when it is on."""
    return DETERMINISTIC_FLAG in passthrough_flags(server_args)


def engine_command(spec: EngineSpec, python: str = sys.executable) -> list[str]:
    """The argv that starts ``spec``'s engine."""
    module = {"sglang": "sglang.launch_server", "embedded": "kuberl.worker.engine.server"}
    argv = [python, "-m", module[spec.kind], "--model-path", spec.model_path,
            "--host", spec.host, "--port", str(spec.port),
            "--weight-version", spec.weight_version, "--random-seed", str(spec.random_seed)]
    if spec.kind == "sglang":
        argv += ["--tp-size", str(spec.tp_size), "--skip-server-warmup", "--enable-metrics"]
    elif spec.tp_size != 1:
        raise EngineError(f"the embedded engine runs on one device; gpusPerEngine is {spec.tp_size}")
    return argv + passthrough_flags(spec.server_args)


def router_command(
    worker_urls: list[str], port: int, host: str = "127.0.0.1", policy: str = "cache_aware",
    request_timeout_secs: int = 14400, extra: list[str] | None = None,
    prometheus_port: int | None = None,
) -> list[str]:
    """The argv that starts the smg router in front of ``worker_urls``.

    Retries are disabled: a resent /generate would double-count samples; the worker requeues instead.
    """
    argv = ["smg", "launch", "--host", host, "--port", str(port), "--policy", policy,
            "--request-timeout-secs", str(request_timeout_secs), "--disable-retries"]
    if prometheus_port is not None:
        argv += ["--prometheus-port", str(prometheus_port)]
    if worker_urls:
        argv += ["--worker-urls", *worker_urls]
    return argv + list(extra or [])


def _die_with_parent() -> None:
    """Linux: SIGTERM the child when its parent dies (a SIGKILLed driver leaves no orphan engine)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ManagedProcess:
    """A child process (engine or router) in its own process group, stopped with it."""

    def __init__(self, argv: list[str], url: str, env: dict[str, str] | None = None,
                 log_path: str | None = None) -> None:
        self.argv, self.url = argv, url
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **(env or {})}, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_parent,
        )

    def adoptable(self) -> dict[str, Any]:
        """What another process needs to wait for, use and stop this one (``EngineHost(adopt=...)``)."""
        return {"url": self.url, "pid": self.proc.pid, "argv": self.argv[:4]}

    async def wait_ready(self, timeout_s: float = 600.0, path: str = "/health_generate") -> None:
        """Poll ``path`` until 200; fails fast if the process exits first."""
        await wait_until_ready(self.url, lambda: self.proc.poll() is None,
                               lambda: f"{self.argv[:4]} exited with code {self.proc.returncode}",
                               timeout_s, path)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._log is not subprocess.DEVNULL:
            self._log.close()


async def wait_until_ready(url: str, alive: Callable[[], bool], exited: Callable[[], str],
                           timeout_s: float = 600.0, path: str = "/health_generate") -> None:
    """Poll ``url + path`` until 200; fails fast (``exited()`` says how) once ``alive()`` is false."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with EngineClient(url, retries=0, timeout=10) as client:
        while True:
            if not alive():
                raise EngineError(f"{exited()} before {url} was ready")
            try:
                await client._request("GET", path)
                return
            except EngineError:
                pass
            if loop.time() > deadline:
                raise EngineError(f"{url}{path} not ready after {timeout_s:.0f} s")
            await asyncio.sleep(0.3)


def launch_engine(spec: EngineSpec, log_path: str | None = None,
                  env: dict[str, str] | None = None) -> ManagedProcess:
    """Start one engine process (call ``wait_ready`` on the result before sending work)."""
    return ManagedProcess(engine_command(spec), spec.url, env=env, log_path=log_path)


def process_running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, exited but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def stop_process_group(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid`` (a process this one did not start), SIGKILL after
    ``timeout_s``."""
    for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
        if not process_running(pid):  # gone (or reaped): never signal a group id a new process may reuse
            return
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not process_running(pid):
                return
            time.sleep(0.05)
