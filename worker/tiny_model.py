"""Build a tiny random-initialised causal LM plus a BPE tokenizer into a directory, from a seed.

Tests and the local demo need a real Hugging Face model directory without a model hub. The
tokenizer is a byte-level BPE trained on a small generated corpus, with a chat template and the
``<think>``/``</think>`` tokens that reasoning graders look for. Same seed, same bytes.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Literal

Family = Literal["qwen2", "glm4"]

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_WORDS = ["the", "answer", "is", "what", "find", "compute", "solve", "let", "number", "sum", "of", "and", "if", "then", "value", "integer", "prime", "square", "root", "triangle", "circle", "area", "how", "many", "ways", "boxed", "frac", "sqrt", "think", "so", "we", "get"]


def _corpus(seed: int, lines: int = 400) -> list[str]:
    """Generated text mixing words, digits and LaTeX so BPE learns useful merges."""
    rng = random.Random(seed)
    out = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 10))]
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        out.append(f"{' '.join(words)} {a} + {b} = {a + b}. \\boxed{{{a + b}}} \\frac{{{a}}}{{{b}}}")
    return out


def build_tokenizer(out: Path, seed: int = 0, vocab_size: int = 300):
    """Train and save a byte-level BPE tokenizer with a chat template; returns the fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<think>", "</think>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    return fast


def build_model(
    out: Path,
    vocab_size: int,
    eos_token_id: int,
    pad_token_id: int,
    family: Family = "qwen2",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    max_position_embeddings: int = 512,
) -> None:
    """Save a random-initialised model (hidden 64, 2 layers by default) in fp32 safetensors."""
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "glm4":
        model = Glm4ForCausalLM(Glm4Config(**common))
    else:
        raise ValueError(f"family must be 'qwen2' or 'glm4', got {family!r}")
    # Random init gives near-uniform logits; a larger output scale makes sampling less flat so that
    # greedy and sampled outputs differ and stop tokens are actually hit in short tests.
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    model.save_pretrained(out)


def build_tiny_model(
    out: str | Path, family: Family = "qwen2", seed: int = 0, max_position_embeddings: int = 512,
    hidden_size: int = 64, num_layers: int = 2,
) -> Path:
    """Write tokenizer + model into ``out`` (skipped when a completed build is already there)."""
    out = Path(out)
    marker = out / ".kuberl-tiny-model.json"
    recipe = {"family": family, "seed": seed, "max_position_embeddings": max_position_embeddings,
              "hidden_size": hidden_size, "num_layers": num_layers}
    if marker.exists() and json.loads(marker.read_text()) == recipe:
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, seed)
    build_model(
        out,
        vocab_size=len(tok),
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.convert_tokens_to_ids("<|endoftext|>"),
        family=family,
        seed=seed,
        hidden_size=hidden_size,
        num_layers=num_layers,
        max_position_embeddings=max_position_embeddings,
    )
    marker.write_text(json.dumps(recipe))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--family", choices=["qwen2", "glm4"], default="qwen2")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(build_tiny_model(args.out, args.family, args.seed))


if __name__ == "__main__":
    main()
