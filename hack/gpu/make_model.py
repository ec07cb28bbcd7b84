"""Write a random-initialised Qwen2 model folder for real SGLang on the GPU machine (no network there).

``--tokenizer``: the byte-level BPE of kuberl.worker.tiny_model (trained offline, with a chat template),
the model saved in bf16 (SGLang has no fp32 rmsnorm kernel). ``--config-only``: just config.json of the
Qwen2.5-1.5B shape, for ``--load-format dummy --skip-tokenizer-init`` throughput runs.
    python3 hack/gpu/make_model.py /tmp/m-small --hidden 256 --layers 4
    python3 hack/gpu/make_model.py /tmp/m-1p5b --config-only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

QWEN25_1P5B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
    "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151643, "torch_dtype": "bfloat16",
    "use_sliding_window": False, "sliding_window": 32768, "max_window_layers": 28,
    "attention_dropout": 0.0, "initializer_range": 0.02,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--max-position", type=int, default=2048)
    p.add_argument("--config-only", action="store_true")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    if a.config_only:
        (a.out / "config.json").write_text(json.dumps(QWEN25_1P5B, indent=2))
        print(f"config-only Qwen2.5-1.5B shape -> {a.out}")
        return
    import torch
    from transformers import AutoModelForCausalLM

    from kuberl.worker.tiny_model import build_model, build_tokenizer

    tok = build_tokenizer(a.out, seed=0)
    build_model(a.out, vocab_size=len(tok), eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), family="qwen2", seed=0,
                hidden_size=a.hidden, num_layers=a.layers, max_position_embeddings=a.max_position)
    AutoModelForCausalLM.from_pretrained(a.out, dtype=torch.bfloat16).save_pretrained(a.out)
    print(f"Qwen2 hidden {a.hidden} x {a.layers} layers, vocab {len(tok)}, bf16 -> {a.out}")


if __name__ == "__main__":
    main()
