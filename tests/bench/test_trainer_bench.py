"""bench/trainer_bench.py runs end to end on CPU (--tiny) so it cannot rot: every torch variant is a different
layout of the same backend, and each prints its row (the GPU figures in bench/README.md come from this script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.bench.scripts import BENCH_DIR


@pytest.mark.timeout(600)
def test_tiny_run_prints_a_row_per_layout_with_its_attention_and_levers(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("KUBERL_DISABLE_LEVERS", None)
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "trainer_bench.py"), "--tiny", "--only", "torch,hf",
                           "--steps", "1"], capture_output=True, text=True, timeout=540, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    assert [r["backend"] for r in rows] == ["torch", "torch_sdpa_rows", "torch_padded", "hf_padded"]
    assert all(r["tokens_per_s"] > 0 and r["gpus"] == 1 for r in rows)
    # off CUDA "auto" keeps the model's attention; each variant names the levers it switched off
    assert "torch: attention sdpa, levers off: none" in proc.stdout
    assert "torch_sdpa_rows: attention sdpa, levers off: ['varlen_attention']" in proc.stdout
    assert "torch_padded: attention sdpa, levers off: ['packed_sequences']" in proc.stdout
