"""The real MegatronBackend on CPU (gloo, fp32) at TP1, TP2 and DP2: the torch backend's logprobs, loss,
gradients and updated weights on the same checkpoint and samples, and a save -> load -> step that
continues the run bit-identically, with the optimizer saved and under spec.checkpoint.noSaveOptim.

Tolerances (fixed before any run, the same as tests/gpu/megatron_checks.py in fp32): both backends hold
the checkpoint's fp32 weights exactly and compute the same function, so only the summation order differs
(megatron's fused QKV and SwiGLU matmuls, the TP split of every reduction, other micro-batch shapes, gloo
sums over ranks). fp32 rounding is ~1e-7 relative per operation; through two layers and a 300-way
softmax that stays well below 1e-5 on values of order 1:
- logprobs max |Δ| <= 1e-4 (log-softmax over 300 logits of magnitude ~1; cancellation in logsumexp);
- loss |Δ| <= 1e-5 + 1e-4 x |loss|;
- gradients (DP 1) and weights after one SGD step at lr 1 (weight Δ = gradient Δ): max |Δ| <= 1e-5;
- weights after one AdamW step (lr 1e-4, decay 0.1, clip 0.01): max |Δ| <= 5e-6, i.e. 5 % of lr, since
  Adam's first step is ~lr x sign(g) and a gradient within rounding noise of 0 may flip its sign.
Resume: the same operations in the same order on the same ranks, so bit-identical (torch.equal).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("megatron.core")
pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).with_name("megatron_backend_cpu_ranks.py")


def run_ranks(world: int, tp: int, root: Path) -> dict:
    from kuberl.worker.net import free_port

    port = free_port()
    procs = [
        subprocess.Popen([sys.executable, str(SCRIPT), str(rank), str(world), str(port), str(root), str(tp)],
                         cwd="/tmp", stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for rank in range(world)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-4000:] for o in outs)
    line = next(x for x in outs[0].splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


@pytest.mark.parametrize(("world", "tp"), [(1, 1), (2, 2), (2, 1)], ids=["tp1", "tp2", "dp2"])
def test_megatron_backend_matches_torch_backend_and_resumes_bit_identically(
    world: int, tp: int, tmp_path: Path
) -> None:
    results = run_ranks(world, tp, tmp_path)
    print(json.dumps(results, indent=1))
    p = results["parity"]
    assert p["dp"] == world // tp
    assert p["logprobs"] <= 1e-4, p
    assert p["sgd_loss"] <= 1e-5 + 1e-4 * abs(p["sgd_loss_value"]), p
    assert p["sgd_clipped"] > 0, "the old logprobs should make some ratios clip"
    if "sgd_grads" in p:
        assert p["sgd_grads"] <= 1e-5, p
    assert p["sgd_weights"] <= 1e-5, p
    assert p["adamw_loss"] <= 1e-5 + 1e-4 * abs(p["sgd_loss_value"]), p
    assert p["adamw_weights"] <= 5e-6, p

    r = results["resume"]
    # Optimizer saved: load -> step equals the uninterrupted step, in this backend and in a fresh one.
    assert not r["optim_marker"]
    assert r["optim_load_restores_weights"]
    assert r["optim_vs_uninterrupted_weights"] and r["optim_vs_uninterrupted_metrics"], r
    assert r["optim_same_backend_vs_fresh_weights"] and r["optim_same_backend_vs_fresh_metrics"], r
    # noSaveOptim: the marker is written, the weights come back, the optimizer starts fresh (so the
    # step differs from the uninterrupted one) whatever the backend did before the load.
    assert r["no_optim_marker"]
    assert r["no_optim_load_restores_weights"]
    assert r["no_optim_smaller"]
    assert r["no_optim_same_backend_vs_fresh_weights"] and r["no_optim_same_backend_vs_fresh_metrics"], r
    assert not r["no_optim_vs_uninterrupted_weights"], "a fresh Adam cannot take the uninterrupted step"
