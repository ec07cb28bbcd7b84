from __future__ import annotations

import hashlib

import pytest

from kuberl.worker.tiny_model import build_tiny_model


def digest(path) -> str:
    return hashlib.sha256((path / "model.safetensors").read_bytes()
                          + (path / "tokenizer.json").read_bytes()).hexdigest()


@pytest.mark.parametrize("family", ["qwen2", "glm4"])
def test_same_seed_same_bytes_and_it_loads(tmp_path, family):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    a = build_tiny_model(tmp_path / "a", family, seed=1)
    b = build_tiny_model(tmp_path / "b", family, seed=1)
    assert digest(a) == digest(b)
    tok = AutoTokenizer.from_pretrained(a)
    model = AutoModelForCausalLM.from_pretrained(a)
    assert model.config.model_type == family and model.config.hidden_size == 64
    assert model.config.num_hidden_layers == 2
    ids = tok.apply_chat_template([{"role": "user", "content": "1+1?"}],
                                  add_generation_prompt=True, return_dict=False)
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    think = tok.encode("<think>x</think>", add_special_tokens=False)
    assert tok.convert_tokens_to_ids("<think>") in think and tok.convert_tokens_to_ids("</think>") in think


def test_other_seed_other_weights(tmp_path):
    assert digest(build_tiny_model(tmp_path / "a", seed=1)) != digest(
        build_tiny_model(tmp_path / "b", seed=2))
