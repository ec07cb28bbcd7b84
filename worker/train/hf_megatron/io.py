"""Reading and writing Hugging Face checkpoints tensor by tensor (safetensors), without building a model.

Each trainer rank reads only the tensors it needs from the (possibly sharded) safetensors files, so a
9B model is never materialised whole on every rank; export writes one safetensors file plus the
config and tokenizer files of the source checkpoint, which is what SGLang loads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor

from kuberl.errors import CheckpointError

_COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja")


class HFTensorReader:
    """Random access to the tensors of an HF checkpoint directory by name."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
            weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        elif (self.directory / "model.safetensors").exists():
            from safetensors import safe_open

            with safe_open(str(self.directory / "model.safetensors"), framework="pt") as f:
                weight_map = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118
        else:
            raise CheckpointError(
                f"spec.model.hfCheckpoint: no safetensors weights in {self.directory} "
                "(expected model.safetensors or model.safetensors.index.json)"
            )
        self.weight_map = weight_map

    def names(self) -> set[str]:
        return set(self.weight_map)

    def get(self, name: str) -> Tensor:
        from safetensors import safe_open

        if name not in self.weight_map:
            raise CheckpointError(f"spec.model.hfCheckpoint: tensor {name} missing in {self.directory}")
        with safe_open(str(self.directory / self.weight_map[name]), framework="pt") as f:
            return f.get_tensor(name)


def write_hf_checkpoint(
    directory: str | Path, tensors: Iterable[tuple[str, Tensor]], source: str | Path,
    dtype: torch.dtype | None = None,
) -> None:
    """Write ``tensors`` as ``model.safetensors`` plus the config/tokenizer files of ``source``."""
    from safetensors.torch import save_file

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {
        name: (t.to(dtype) if dtype is not None else t).detach().cpu().contiguous()
        for name, t in tensors
    }
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    copy_hf_metadata(source, out)


def copy_hf_metadata(source: str | Path, out: str | Path) -> None:
    """Copy the config, generation config and tokenizer files of the HF checkpoint ``source``."""
    for name in _COPIED:
        src = Path(source) / name
        if src.exists():
            shutil.copy2(src, Path(out) / name)
