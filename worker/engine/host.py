"""A Ray actor that hosts one rollout engine process on its pod (or CPU bundle) and reports its URL.

In a cluster it starts real SGLang on the rollout pod's GPUs, listening on the pod IP; locally it starts
the embedded engine on loopback. Either way the driver only ever sees a URL that speaks SGLang's API.
A local CPU run's driver starts the engine process itself while Ray starts, and the host adopts it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from kuberl.worker.engine.launcher import (
    EngineSpec,
    ManagedProcess,
    launch_engine,
    process_running,
    stop_process_group,
    wait_until_ready,
)
from kuberl.worker.net import SGLANG_MAX_PORT, free_port


def prelaunch_engines(ray_address: str | None, in_cluster: bool, use_gpus: bool) -> bool:
    """Pure: engines can start before Ray only on a local CPU run, where Ray assigns them no devices."""
    return ray_address is None and not in_cluster and not use_gpus


def launch_local_engine(spec: dict[str, Any], log_path: str, bundle: dict[str, float]) -> ManagedProcess:
    """Start a local engine process on loopback with the threads its CPU bundle grants (what Ray sets
    for an actor: OMP_NUM_THREADS = its CPUs, unless the user set it)."""
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, int(bundle.get("CPU", 1))))
    engine = EngineSpec(**{**spec, "port": free_port(20000, SGLANG_MAX_PORT), "host": "127.0.0.1"})
    return launch_engine(engine, log_path, env={"OMP_NUM_THREADS": threads})


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
                 reachable: bool = False, adopt: dict[str, Any] | None = None) -> None:
        self.spec_args = spec
        self.log_path = log_path
        self.reachable = reachable  # listen on the pod IP (cluster) instead of loopback (local)
        self.process: ManagedProcess | None = None
        self.adopted = adopt  # {"url", "pid", "argv"} of an engine the driver started (local CPU runs)

    def start(self, timeout_s: float = 900.0) -> str:
        if self.adopted is not None:
            pid, argv = self.adopted["pid"], self.adopted["argv"]
            asyncio.run(wait_until_ready(self.adopted["url"], lambda: process_running(pid),
                                         lambda: f"{argv} (pid {pid}) exited", timeout_s))
            return str(self.adopted["url"])
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
        if self.adopted is not None:
            return int(self.adopted["pid"])
        return None if self.process is None else self.process.proc.pid

    def stop(self) -> None:
        if self.adopted is not None:  # not our child: stop its group; its parent, the driver, reaps it
            stop_process_group(int(self.adopted["pid"]))
            self.adopted = None
        if self.process is not None:
            self.process.stop()
            self.process = None
