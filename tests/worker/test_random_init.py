"""Weightless model folders: random init only when the marker says so (trainer backends, embedded engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kuberl.errors import CheckpointError
from kuberl.worker.algo.losses import LossConfig
from kuberl.worker.engine.server import parse_args
from kuberl.worker.random_init import random_hf_model, wants_random_init, write_random_init_marker
from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

CONFIG = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 64, "hidden_size": 32,
          "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 128, "tie_word_embeddings": False}
OPT = {"type": "adam", "lr": 1e-3, "min_lr": 0.0, "lr_decay_style": "constant", "lr_warmup_iters": 0,
       "weight_decay": 0.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_eps": 1e-8, "clip_grad": 1.0}


def config_only(path: Path, marker: bool) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(CONFIG))
    if marker:
        write_random_init_marker(path, "test")
    return path


def test_only_a_marked_weightless_folder_asks_for_random_init(tmp_path):
    assert not wants_random_init(config_only(tmp_path / "plain", marker=False))
    marked = config_only(tmp_path / "marked", marker=True)
    assert wants_random_init(marked)
    (marked / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="random-init marker"):
        wants_random_init(marked)


def test_random_model_is_seeded_and_leaves_the_global_rng_alone(tmp_path):
    folder = config_only(tmp_path / "m", marker=True)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_hf_model(folder, torch.float32, seed=7)
    after = torch.rand(1)
    b = random_hf_model(folder, torch.float32, seed=7)
    assert torch.equal(before, after)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_torch_backend_trains_from_a_marked_config_only_folder(tmp_path):
    folder = config_only(tmp_path / "m", marker=True)
    trainer = TorchBackend(TorchBackendConfig(hf_checkpoint=str(folder), loss=LossConfig(), optimizer=OPT,
                                              device="cpu"))
    assert sum(p.numel() for p in trainer.model.parameters()) > 0


def test_torch_backend_still_refuses_an_unmarked_weightless_folder(tmp_path):
    folder = config_only(tmp_path / "m", marker=False)
    with pytest.raises(OSError):
        TorchBackend(TorchBackendConfig(hf_checkpoint=str(folder), loss=LossConfig(), optimizer=OPT,
                                        device="cpu"))


def test_embedded_engine_takes_sglangs_dummy_load_format():
    assert parse_args(["--model-path", "m", "--load-format", "dummy"]).load_format == "dummy"
    assert parse_args(["--model-path", "m"]).load_format == "auto"
