"""Build the tiny example: a word-level tokenizer, a random-initialised small GLM4 model, and a toy task.

The task: the prompt is three letters, the answer is the last one ("k f c" -> "c"). A random model answers
correctly about 1 time in 16; GRPO with the built-in ``f1`` grader teaches it to answer right nearly always
within a few minutes on two CPU cores. Everything is generated locally and deterministically from a seed.

Usage: python examples/tiny/prepare.py [--out examples/tiny/build] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

# b..q: the f1 grader drops English articles, so "a" could never score.
LETTERS = [chr(ord("b") + i) for i in range(16)]
SPECIALS = ["<|pad|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<|user|> {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}<|assistant|> {{ m['content'] }} <|eos|> "
    "{% else %}<|system|> {{ m['content'] }} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(out: Path) -> None:
    """Write a word-level tokenizer (one token per letter) with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + LETTERS + ["<|unk|>"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|eos|>",
        unk_token="<|unk|>",
        additional_special_tokens=["<|user|>", "<|assistant|>", "<|system|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def build_model(out: Path, seed: int) -> None:
    """Write a random-initialised GLM4 causal LM sized for CPU (about 0.1 M parameters)."""
    import torch
    from transformers import Glm4Config, Glm4ForCausalLM

    torch.manual_seed(seed)
    vocab_size = len(SPECIALS) + len(LETTERS) + 1
    config = Glm4Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    model = Glm4ForCausalLM(config)
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out)


def build_data(out: Path, seed: int, n_train: int = 2000, n_eval: int = 64,
               num_letters: int = len(LETTERS)) -> None:
    """Write train.jsonl and eval.jsonl rows: {"prompt": [chat messages], "label": "<letter>"}.

    ``num_letters`` < 16 makes an easier task (fewer choices) for quick tests.
    """
    rng = random.Random(seed)
    alphabet = LETTERS[:num_letters]
    for name, count in (("train", n_train), ("eval", n_eval)):
        with (out / f"{name}.jsonl").open("w") as f:
            for _ in range(count):
                letters = [rng.choice(alphabet) for _ in range(3)]
                row = {"prompt": [{"role": "user", "content": " ".join(letters)}],
                       "label": letters[-1]}
                f.write(json.dumps(row) + "\n")


def prepare(out: Path, seed: int = 0, num_letters: int = len(LETTERS)) -> Path:
    """Build tokenizer, model and data into ``out`` (idempotent: skipped when already built)."""
    marker = out / ".complete"
    if marker.exists():
        return out
    (out / "model").mkdir(parents=True, exist_ok=True)
    build_tokenizer(out / "model")
    build_model(out / "model", seed)
    build_data(out, seed, num_letters=num_letters)
    marker.write_text("ok\n")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "build")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(prepare(args.out, args.seed))


if __name__ == "__main__":
    main()
