"""The engine host actor's logic, run in-process: adopting an engine the driver started before Ray, and
a start-up cheap enough to overlap with it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from kuberl.worker.engine.host import EngineHost, launch_local_engine, prelaunch_engines
from kuberl.worker.engine.launcher import process_running


def test_engine_host_imports_neither_torch_nor_transformers() -> None:
    """The host actor starts before its engine can: torch would add 8 s of the local start-up (2 cores)."""
    code = ("import sys, kuberl.worker.engine.host\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(("ray_address", "in_cluster", "use_gpus", "expected"), [
    (None, False, False, True),  # a local CPU run
    (None, False, True, False),  # local GPUs: Ray assigns the engine its devices
    ("auto", False, False, False),  # joining a cluster: engines belong on its nodes
    (None, True, False, False),
])
def test_only_local_cpu_runs_start_engines_before_ray(ray_address, in_cluster, use_gpus, expected) -> None:
    assert prelaunch_engines(ray_address, in_cluster, use_gpus) is expected


def test_host_adopts_a_prelaunched_engine_then_replaces_it_with_its_own(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = {"model_path": str(tiny_model_dir), "kind": "embedded", "weight_version": "0"}
    first = launch_local_engine(spec, str(tmp_path / "engine.log"), {"CPU": 1})
    host = EngineHost(spec, str(tmp_path / "engine.log"), adopt=first.adoptable())
    try:
        url = host.start(timeout_s=120)
        assert url == first.url and host.pid() == first.proc.pid
        assert httpx.get(url + "/model_info", timeout=10).json()["weight_version"] == "0"
        environ = Path(f"/proc/{first.proc.pid}/environ").read_bytes().split(b"\0")
        threads = os.environ.get("OMP_NUM_THREADS") or "1"  # the user's, else what Ray gives a 1-CPU actor
        assert f"OMP_NUM_THREADS={threads}".encode() in environ

        replaced = host.restart("replaced-1", timeout_s=120)  # the supervisor's path after a failure
        first.proc.wait(timeout=15)  # the adopted process was stopped (and is reaped by its parent)
        assert not process_running(first.proc.pid)
        assert replaced != url and host.pid() not in (None, first.proc.pid)
        assert httpx.get(replaced + "/model_info", timeout=10).json()["weight_version"] == "replaced-1"
    finally:
        host.stop()
        first.stop()
    assert host.pid() is None
