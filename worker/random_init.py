"""Random weights on purpose: a model directory with a config (and tokenizer) but no weights.

Throughput runs of a large architecture (bench/reference_run.py: GLM4-9B with nothing downloadable) need
the shape, not the values. The directory says so with a marker file, so a checkpoint that merely lost its
weights still fails loudly instead of training noise: trainer backends initialise randomly only when the
marker is there and no weight file is. Engines get random weights from ``--load-format dummy`` (SGLang's
flag; the embedded engine accepts it too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kuberl.errors import CheckpointError

RANDOM_INIT_MARKER = "kuberl-random-init.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def write_random_init_marker(model_dir: str | Path, reason: str) -> Path:
    """Mark ``model_dir`` as weightless on purpose; ``reason`` is kept for whoever finds the folder."""
    path = Path(model_dir) / RANDOM_INIT_MARKER
    path.write_text(json.dumps({"random_init": True, "reason": reason}, indent=2))
    return path


def wants_random_init(model_dir: str | Path) -> bool:
    """True when ``model_dir`` carries the marker and no weights.

    Raises:
        CheckpointError: marker and weight files together (which one is meant is unclear).
    """
    directory = Path(model_dir)
    if not (directory / RANDOM_INIT_MARKER).is_file():
        return False
    weights = [name for name in WEIGHT_FILES if (directory / name).exists()]
    if weights:
        raise CheckpointError(
            f"spec.model.hfCheckpoint: {directory} holds {weights} and the random-init marker "
            f"{RANDOM_INIT_MARKER}; delete the marker to load the weights, or the weights to train from "
            "random init"
        )
    return True


def random_hf_model(model_dir: str | Path, dtype: Any, seed: int) -> Any:
    """A randomly initialised Hugging Face causal LM of ``model_dir``'s config (seeded, on CPU)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
