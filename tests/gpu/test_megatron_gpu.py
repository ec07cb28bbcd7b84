"""Runs tests/gpu/megatron_checks.py under torchrun: TP1 on one GPU, TP2 and DP2 on two (skipped without
CUDA). The checks and their tolerances are documented in that script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SCRIPT = Path(__file__).with_name("megatron_checks.py")


@pytest.mark.parametrize(("procs", "tp"), [(1, 1), (2, 2), (2, 1)], ids=["tp1", "tp2", "dp2"])
def test_megatron_backend_checks_pass(procs: int, tp: int, tmp_path: Path) -> None:
    if torch.cuda.device_count() < procs:
        pytest.skip(f"needs {procs} GPUs")
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "NVSHMEM_DISABLE_NVLS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", str(SCRIPT),
         "--tp", str(tp), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env, cwd="/",
    )
    print(proc.stdout[-6000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
