"""The real megatron-core GPT model, built on CPU in fp32 from an HF checkpoint, gives HF's logits for
every family (GLM4 sandwich norms + partial interleaved rotary, Qwen2 QKV bias, Qwen3 q/k norm, Llama),
and exports the exact HF tensors back."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def cpu_megatron():
    """megatron-core on CPU: its CUDA-only calls (rotary table device, the RNG tracker fork for dropout,
    which is 0) redirected by the helper the backend itself uses on CPU; everything else is megatron's."""
    from kuberl.worker.train import megatron_model as mm
    from kuberl.worker.train.megatron_cpu import megatron_on_cpu

    with megatron_on_cpu():
        mm.init_parallel(mm.Parallelism(), device=torch.device("cpu"))
        yield mm
    mm.release_parallel()


def tiny_hf(family: str, out: Path):
    from transformers import (
        Glm4Config,
        Glm4ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    classes = {"glm4": (Glm4Config, Glm4ForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
               "llama": (LlamaConfig, LlamaForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}
    cfg_cls, model_cls = classes[family]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(
        vocab_size=300, pad_token_id=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        max_position_embeddings=128,
    )).eval()
    with torch.no_grad():  # norms and biases start at 1 / 0: perturb them so a swapped map shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)
    return model


@pytest.mark.parametrize("family", ["glm4", "qwen2", "qwen3", "llama"])
def test_megatron_model_matches_hf_logits_and_exports_hf_tensors(cpu_megatron, family: str, tmp_path: Path) -> None:
    from kuberl.worker.train.hf_megatron import ModelShape

    mm = cpu_megatron
    hf = tiny_hf(family, tmp_path)
    shape = ModelShape.from_hf_dir(tmp_path)
    model = mm.build_gpt_model(shape, mm.Parallelism(), dtype=torch.float32, use_te=False,
                               device=torch.device("cpu"))
    mm.load_hf_weights(model, shape, str(tmp_path), tp_rank=0, tp_size=1)
    ids = torch.randint(0, 300, (2, 13), generator=torch.Generator().manual_seed(1))
    causal = torch.ones(13, 13, dtype=torch.bool).triu(1)[None, None]  # True = masked
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        out = model(input_ids=ids, position_ids=torch.arange(13)[None].expand(2, -1), attention_mask=causal)
    assert out.shape == (2, 13, 384)  # vocabulary padded to a multiple of 128
    # fp32 on CPU: only summation order differs (observed ~2e-7 of logits ~0.6).
    torch.testing.assert_close(out[..., :300], ref, atol=1e-5, rtol=1e-5)
    exported = dict(mm.iter_hf_weights(model, shape, None))
    state = hf.state_dict()
    assert sorted(exported) == sorted(state)
    for name, tensor in exported.items():
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize("family", ["glm4", "qwen2"])
def test_torch_and_megatron_backends_skip_weight_decay_on_the_same_parameters(
    cpu_megatron, family: str, tmp_path: Path
) -> None:
    """megatron's own rule (its standard optimizer overrides: wd_mult 0) and the torch backend's
    ``skips_weight_decay`` pick the same parameters, matched through the HF <-> Megatron maps."""
    from megatron.core.optimizer import OptimizerConfig, get_standard_config_overrides

    from kuberl.worker.train.hf_megatron import ModelShape
    from kuberl.worker.train.hf_megatron.maps import param_maps
    from kuberl.worker.train.torch_backend import skips_weight_decay

    mm = cpu_megatron
    hf = tiny_hf(family, tmp_path)
    shape = ModelShape.from_hf_dir(tmp_path)
    model = mm.build_gpt_model(shape, mm.Parallelism(), dtype=torch.float32, use_te=False,
                               device=torch.device("cpu"))
    overrides = get_standard_config_overrides(OptimizerConfig(lr=1e-3, weight_decay=0.1))
    megatron_params = dict(model.named_parameters())
    hf_params = dict(hf.named_parameters())
    no_decay = {name: any(key.matches(p, name) and o.get("wd_mult") == 0.0 for key, o in overrides.items())
                for name, p in megatron_params.items()}
    assert any(no_decay.values()) and not all(no_decay.values())
    for m in param_maps(shape):
        torch_rule = {skips_weight_decay(n, hf_params[n]) for n in m.hf}
        assert torch_rule == {no_decay[m.megatron]}, (m.megatron, m.hf)


RELEASE_SCRIPT = """
import json, os
import torch
from kuberl.worker.train import megatron_model as mm
from kuberl.worker.train.megatron_cpu import megatron_on_cpu

def gloo_threads():
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            names.append(open(f"/proc/self/task/{task}/comm").read().strip())
        except OSError:
            pass
    return sorted(n for n in names if "gloo" in n or "tcpstore" in n)

from transformers import Qwen2Config, Qwen2ForCausalLM
from kuberl.worker.train.hf_megatron import ModelShape

Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2)).save_pretrained("hf")
with megatron_on_cpu():
    mm.init_parallel(mm.Parallelism(), device=torch.device("cpu"))
    started = gloo_threads()
    model = mm.build_gpt_model(ModelShape.from_hf_dir("hf"), mm.Parallelism(), dtype=torch.float32,
                               use_te=False, device=torch.device("cpu"))
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)[None, None]
    with torch.no_grad():  # fills the rotary embedding's cache, which holds the model's CP group
        model(input_ids=torch.zeros(1, 5, dtype=torch.long), position_ids=torch.arange(5)[None],
              attention_mask=causal)
    del model
    mm.release_parallel()
print("RESULT " + json.dumps({"started": started, "left": gloo_threads()}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread names from Linux /proc")
def test_release_parallel_stops_every_gloo_thread_megatron_started(tmp_path: Path) -> None:
    """megatron-core's own teardown leaves groups alive, through two globals it forgets and the rotary
    embedding's cached forward (their gloo threads then run into interpreter shutdown, where they can
    crash the process); ``release_parallel`` leaves none, after a model was built and run. A fresh
    process, so other tests' groups cannot blur the count, and it must exit cleanly."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT "))
    threads = json.loads(line.removeprefix("RESULT "))
    assert any("gloo" in name for name in threads["started"]), threads  # the check sees gloo's threads
    assert threads["left"] == [], threads
