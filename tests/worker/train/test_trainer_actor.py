"""The trainer backend registry: torch and megatron, with actionable errors when one cannot be built."""

from __future__ import annotations

import sys

import pytest

from kuberl.errors import SpecError
from kuberl.worker.algo.losses import LossConfig
from kuberl.worker.train import trainer_actor
from kuberl.worker.train.trainer_actor import (
    AVAILABLE_BACKENDS,
    build_backend,
    check_backend_available,
)


def test_registry_lists_torch_and_megatron() -> None:
    assert AVAILABLE_BACKENDS == ("torch", "megatron")
    check_backend_available("torch")


def test_unknown_backend_names_the_spec_field() -> None:
    with pytest.raises(SpecError, match=r"spec\.backends\.trainer: unknown trainer backend 'jax'"):
        check_backend_available("jax")


def test_megatron_needs_megatron_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_actor, "_megatron_core_installed", lambda: False)
    with pytest.raises(SpecError, match=r"pip install kuberl\[megatron\]"):
        check_backend_available("megatron")
    monkeypatch.setattr(trainer_actor, "_megatron_core_installed", lambda: True)
    check_backend_available("megatron")


def test_megatron_core_probe_does_not_import_it() -> None:
    before = set(sys.modules)
    trainer_actor._megatron_core_installed()
    assert not any(m == "megatron.core" or m.startswith("megatron.core.") for m in set(sys.modules) - before)


def test_unimportable_megatron_backend_module_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_actor, "_megatron_core_installed", lambda: True)
    monkeypatch.setitem(sys.modules, "kuberl.worker.train.megatron_backend", None)  # import -> ImportError
    with pytest.raises(SpecError, match=r"cannot be imported .*pip install kuberl\[megatron\]"):
        build_backend("megatron", object())


def test_one_rank_actor_does_not_start_torch_distributed(tiny_model_dir) -> None:
    import torch.distributed as dist

    from kuberl.worker.train.torch_backend import TorchBackendConfig
    from kuberl.worker.train.trainer_actor import TrainerActor

    config = TorchBackendConfig(
        hf_checkpoint=str(tiny_model_dir), device="cpu",
        loss=LossConfig(per_token=False), optimizer={"type": "sgd", "lr": 0.1, "weight_decay": 0.0},
    )
    actor = TrainerActor("torch", config)
    assert actor.rank == 0 and actor.world_size == 1 and not dist.is_initialized()
    with pytest.raises(ValueError, match="master_addr"):
        TrainerActor("torch", config, rank=0, world_size=2)
