"""A Ray actor that hosts one rollout engine process on its pod (or CPU bundle) and reports its URL.

In a cluster it starts real SGLang on the rollout pod's GPUs, listening on the pod IP; locally it starts
the embedded engine on loopback. Either way the driver only ever sees a URL that speaks SGLang's API.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kuberl.worker.engine.launcher import EngineSpec, ManagedProcess, launch_engine
from kuberl.worker.net import SGLANG_MAX_PORT, free_port


def node_ip() -> str:
    """The address other pods reach this one at (loopback when not in a cluster)."""
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:  # pragma: no cover - ray is a worker dependency
        pass
    return "127.0.0.1"


class EngineHost:
    """Owns one engine process; ``start`` returns its URL once ``/health_generate`` answers."""

    def __init__(self, spec: dict[str, Any], log_path: str | None = None,
                 reachable: bool = False) -> None:
        self.spec_args = spec
        self.log_path = log_path
        self.reachable = reachable  # listen on the pod IP (cluster) instead of loopback (local)
        self.process: ManagedProcess | None = None

    def start(self, timeout_s: float = 900.0) -> str:
        ip = node_ip() if self.reachable else "127.0.0.1"
        host = "0.0.0.0" if self.reachable else "127.0.0.1"
        spec = EngineSpec(**{**self.spec_args, "port": free_port(20000, SGLANG_MAX_PORT), "host": host})
        self.process = launch_engine(spec, self.log_path)
        asyncio.run(self.process.wait_ready(timeout_s))
        return f"http://{ip}:{spec.port}"

    def restart(self, weight_version: str | None = None, timeout_s: float = 900.0) -> str:
        """Stop whatever is left of the engine and start a fresh one (new port); returns its URL."""
        self.stop()
        if weight_version is not None:
            self.spec_args = {**self.spec_args, "weight_version": weight_version}
        return self.start(timeout_s)

    def pid(self) -> int | None:
        """The engine process's pid (tests kill it to exercise the restart path)."""
        return None if self.process is None else self.process.proc.pid

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
