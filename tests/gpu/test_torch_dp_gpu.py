"""The data-parallel torch backend on 2 GPUs over NCCL gives the 1-GPU logprobs, loss and gradients.

Runs tests/gpu/torch_dp_checks.py under torchrun with 1 and 2 processes on the same tiny model and
samples; tolerances are fixed up front in that script's docstring (float64 1e-6, float32 2e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SCRIPT = Path(__file__).with_name("torch_dp_checks.py")
ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = {"float64": 1e-6, "float32": 2e-5}


def run(procs: int, model: Path, out: Path, dtype: str) -> dict:
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
           "NVSHMEM_DISABLE_NVLS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
         str(SCRIPT), "--out", str(out), "--model", str(model), "--dtype", dtype],
        capture_output=True, text=True, timeout=300, env=env, cwd="/",
    )
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_two_gpu_ranks_match_one(dtype: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from kuberl.worker.tiny_model import build_tiny_model

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    model = build_tiny_model(tmp_path / "model", "qwen2", seed=0, max_position_embeddings=1024)
    one = run(1, model, tmp_path / "one", dtype)
    two = run(2, model, tmp_path / "two", dtype)
    tol = TOLERANCE[dtype]
    assert two["replicas_agree"]
    lp_diff = max(abs(a - b) for x, y in zip(one["logprobs"], two["logprobs"], strict=True)
                  for a, b in zip(x, y, strict=True))
    w1, w2 = load_file(tmp_path / "one" / "weights.safetensors"), load_file(tmp_path / "two" / "weights.safetensors")
    w_diff = max(float((w1[k].double() - w2[k].double()).abs().max()) for k in w1)
    print(f"{dtype}: max |logprob diff| {lp_diff:.3e}, max |w - g diff| {w_diff:.3e}, loss "
          f"{one['metrics']['train/loss']:.10g} vs {two['metrics']['train/loss']:.10g}")
    assert lp_diff <= tol and w_diff <= tol
    for key in ("train/loss", "train/grad_norm", "train/entropy"):
        assert abs(one["metrics"][key] - two["metrics"][key]) <= tol * max(1.0, abs(one["metrics"][key])), key
