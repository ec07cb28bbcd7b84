"""The CPU redirection of megatron-core's CUDA-only calls: active only inside the block, re-entrant, and
it changes placements and type names, never values."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("megatron.core")

from kuberl.worker.train.megatron_cpu import megatron_on, megatron_on_cpu


def test_cuda_placements_land_on_cpu_inside_the_block_only() -> None:
    cuda_device = torch.cuda.current_device
    with megatron_on_cpu():
        t = torch.tensor([1.5, 2.5], device="cuda")
        z = torch.zeros(3, device=torch.device("cuda", 0))
        assert t.device.type == "cpu" and z.device.type == "cpu"
        assert torch.equal(t.cuda(), t) and torch.equal(t.to("cuda"), t)
        assert t.type() == "torch.cuda.FloatTensor"  # what megatron's optimizers accept
        assert t.to(torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        assert torch.cuda.current_device() == "cpu"
        with megatron_on_cpu():  # nested: still active, and the outer block is intact afterwards
            assert torch.empty(1, device="cuda").device.type == "cpu"
        assert torch.ones(1, device="cuda").device.type == "cpu"
    assert torch.cuda.current_device is cuda_device
    assert torch.tensor([1.0]).type() == "torch.FloatTensor"


def test_the_rng_tracker_fork_is_a_no_op_on_cpu() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    original = mrandom.CudaRNGStatesTracker.fork
    with megatron_on_cpu(), mrandom.CudaRNGStatesTracker().fork():
        pass
    assert mrandom.CudaRNGStatesTracker.fork is original


def test_nothing_is_redirected_for_a_cuda_device() -> None:
    with megatron_on("cuda"):
        assert torch.tensor([1.0]).type() == "torch.FloatTensor"
