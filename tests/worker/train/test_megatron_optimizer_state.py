"""The Megatron backend's optimizer bookkeeping that megatron-core leaves to its training loop: Adam step
counters after a checkpoint load, and the per-group weight decay (biases and norms not decayed)."""

from __future__ import annotations

import copy

import torch

from kuberl.worker.train.megatron_backend import untie_step_counters, weight_decay_for


def _adam(params: list[torch.nn.Parameter]) -> torch.optim.AdamW:
    return torch.optim.AdamW(params, lr=0.1, betas=(0.9, 0.98), weight_decay=0.0)


def _step(opt: torch.optim.Optimizer, grads: list[torch.Tensor]) -> None:
    for p, g in zip(opt.param_groups[0]["params"], grads, strict=True):
        p.grad = g.clone()
    opt.step()


def test_resume_after_megatrons_shared_step_load_matches_an_uninterrupted_adam_run() -> None:
    torch.manual_seed(0)
    start = [torch.randn(5) for _ in range(4)]
    grads = [[torch.randn(5) for _ in range(4)] for _ in range(3)]

    reference = _adam([torch.nn.Parameter(t.clone()) for t in start])
    for g in grads:
        _step(reference, g)

    first = _adam([torch.nn.Parameter(t.clone()) for t in start])
    _step(first, grads[0])
    saved = copy.deepcopy(first.state_dict())
    # What DistributedOptimizer.load_state_dict does without Transformer Engine/apex (megatron-core
    # 0.19.2, distrib_optimizer.py): one step tensor stored into every parameter's state.
    shared = torch.tensor(float(saved["state"][0]["step"]))
    for s in saved["state"].values():
        s["step"] = shared
    resumed = _adam([torch.nn.Parameter(p.detach().clone()) for p in first.param_groups[0]["params"]])
    resumed.load_state_dict(saved)
    assert untie_step_counters(resumed) == 3  # four parameters, one tensor: three re-allocated
    for g in grads[1:]:
        _step(resumed, g)

    assert [float(s["step"]) for s in resumed.state.values()] == [3.0] * 4
    for a, b in zip(resumed.param_groups[0]["params"], reference.param_groups[0]["params"], strict=True):
        assert torch.equal(a, b)


def test_without_untying_the_shared_counter_advances_once_per_parameter() -> None:
    """The failure untie_step_counters prevents (seen as a non-bit-identical resume on the GPU)."""
    params = [torch.nn.Parameter(torch.ones(2)) for _ in range(3)]
    opt = _adam(params)
    _step(opt, [torch.ones(2)] * 3)
    saved = opt.state_dict()
    shared = torch.tensor(1.0)
    for s in saved["state"].values():
        s["step"] = shared
    opt.load_state_dict(saved)
    _step(opt, [torch.ones(2)] * 3)
    assert [float(s["step"]) for s in opt.state.values()] == [4.0] * 3
    assert untie_step_counters(opt) == 2
    assert untie_step_counters(opt) == 0  # already distinct: a no-op


def test_weight_decay_follows_megatrons_wd_mult_groups() -> None:
    assert weight_decay_for({"wd_mult": 0.0}, 0.1) == 0.0
    assert weight_decay_for({"wd_mult": 1.0}, 0.1) == 0.1
    assert weight_decay_for({}, 0.1) == 0.1


def test_initialised_adam_state_steps_exactly_like_no_state() -> None:
    """init_adam_state lets a never-stepped backend load a checkpoint; it must not change the first step."""
    from kuberl.worker.train.megatron_backend import init_adam_state

    torch.manual_seed(1)
    start, grads = [torch.randn(4) for _ in range(3)], [torch.randn(4) for _ in range(3)]
    lazy = _adam([torch.nn.Parameter(t.clone()) for t in start])
    eager = _adam([torch.nn.Parameter(t.clone()) for t in start])
    assert init_adam_state(eager) == 3 and init_adam_state(eager) == 0
    assert {float(s["step"]) for s in eager.state.values()} == {0.0}
    _step(lazy, grads)
    _step(eager, grads)
    for a, b in zip(lazy.param_groups[0]["params"], eager.param_groups[0]["params"], strict=True):
        assert torch.equal(a, b)
