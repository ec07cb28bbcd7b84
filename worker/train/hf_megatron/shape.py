"""The decoder architecture as Megatron needs it, read from a Hugging Face ``config.json``.

Megatron cannot read a checkpoint's architecture; the HF config is the authority for the weights being
loaded, so the shape comes from it, and a spec preset (``spec.model.architecture``) is checked against it
rather than silently trusted (the reference guide warns that values such as the rotary base differ between
models of one family).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kuberl.errors import SpecError

FAMILIES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "glm4": "glm4"}


def padded_vocab_size(vocab_size: int, tp_size: int, divisible_by: int = 128) -> int:
    """Megatron's padded vocabulary: a multiple of ``divisible_by * tp_size`` (its default rule), so
    the rows split evenly over tensor-parallel ranks and dist checkpoints match other Megatron tools."""
    step = divisible_by * tp_size
    return -(-vocab_size // step) * step


@dataclass(frozen=True)
class ModelShape:
    """Everything the weight maps and the Megatron ``TransformerConfig`` need."""

    family: str  # llama | qwen2 | qwen3 | glm4
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    head_dim: int
    vocab_size: int
    rotary_base: float
    rotary_percent: float = 1.0
    rotary_interleaved: bool = False
    rope_scaling_factor: float | None = None  # llama3-style scaling, None when off
    norm_epsilon: float = 1e-6
    qkv_bias: bool = False
    qk_layernorm: bool = False  # Qwen3
    sandwich_norms: bool = False  # GLM4: post-attention and post-MLP RMSNorms
    tie_embeddings: bool = False
    max_position_embeddings: int = 32768

    @property
    def heads_per_group(self) -> int:
        return self.num_attention_heads // self.num_query_groups

    @classmethod
    def from_hf_config(cls, config: dict[str, Any]) -> ModelShape:
        """Build the shape from a config.json dict (transformers 4.x or 5.x layout).

        Raises:
            SpecError: the model type is not one of the supported dense families, or it uses a
                feature the maps do not cover (an unknown rope scaling, a non-SiLU activation).
        """
        model_type = config.get("model_type", "")
        if model_type not in FAMILIES:
            raise SpecError([
                f"spec.model.hfCheckpoint: model_type {model_type!r} has no Megatron weight map; "
                f"supported: {sorted(FAMILIES)} (or use spec.backends.trainer: torch)"
            ])
        family = FAMILIES[model_type]
        act = config.get("hidden_act", "silu")
        if act != "silu":
            raise SpecError([f"spec.model.hfCheckpoint: hidden_act {act!r} is not supported (SwiGLU only)"])
        rope = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
        theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        scaling: float | None = None
        if rope_type == "llama3":
            scaling = float(rope["factor"])
        elif rope_type not in ("default", None):
            raise SpecError([
                f"spec.model.hfCheckpoint: rope type {rope_type!r} is not supported by the Megatron "
                "backend (default and llama3 are); use spec.backends.trainer: torch"
            ])
        heads = int(config["num_attention_heads"])
        hidden = int(config["hidden_size"])
        partial = rope.get("partial_rotary_factor", config.get("partial_rotary_factor"))
        if family == "glm4" and partial is None:
            partial = 0.5  # transformers' Glm4Config default
        return cls(
            family=family,
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=hidden,
            ffn_hidden_size=int(config["intermediate_size"]),
            num_attention_heads=heads,
            num_query_groups=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            vocab_size=int(config["vocab_size"]),
            rotary_base=float(theta),
            rotary_percent=float(partial if partial is not None else 1.0),
            rotary_interleaved=family == "glm4",
            rope_scaling_factor=scaling,
            norm_epsilon=float(config.get("rms_norm_eps", 1e-6)),
            qkv_bias=True if family == "qwen2" else bool(config.get("attention_bias", False)),
            qk_layernorm=family == "qwen3",
            sandwich_norms=family == "glm4",
            tie_embeddings=bool(config.get("tie_word_embeddings", False)),
            max_position_embeddings=int(config.get("max_position_embeddings", 32768)),
        )

    @classmethod
    def from_hf_dir(cls, directory: str | Path) -> ModelShape:
        return cls.from_hf_config(json.loads((Path(directory) / "config.json").read_text()))

    def check_tensor_parallel(self, tp_size: int) -> None:
        """Raise unless heads, query groups and the FFN split evenly over ``tp_size`` ranks."""
        problems = [
            f"{what} ({n}) is not divisible by spec.perf.tensorModelParallelSize ({tp_size})"
            for what, n in (
                ("num_attention_heads", self.num_attention_heads),
                ("num_key_value_heads", self.num_query_groups),
                ("intermediate_size", self.ffn_hidden_size),
            )
            if n % tp_size
        ]
        if problems:
            raise SpecError([f"spec.perf.tensorModelParallelSize: {p}; lower it" for p in problems])

    def check_preset(self, preset: Any) -> None:
        """Raise when the spec's architecture preset disagrees with the checkpoint's config.json.

        ``preset`` is a ``kuberl.api.presets.Architecture`` (or None for ``auto``, which passes).
        """
        if preset is None:
            return
        pairs = {
            "numLayers": (preset.num_layers, self.num_layers),
            "hiddenSize": (preset.hidden_size, self.hidden_size),
            "ffnHiddenSize": (preset.ffn_hidden_size, self.ffn_hidden_size),
            "numAttentionHeads": (preset.num_attention_heads, self.num_attention_heads),
            "numQueryGroups": (preset.num_query_groups, self.num_query_groups),
            "rotaryBase": (float(preset.rotary_base), self.rotary_base),
            "rotaryPercent": (preset.rotary_percent, self.rotary_percent),
            "addQkvBias": (preset.add_qkv_bias, self.qkv_bias),
        }
        bad = [f"{k}: preset {a} != config.json {b}" for k, (a, b) in pairs.items() if a != b]
        if preset.family != self.family and not (preset.family == "qwen2" and self.family == "qwen3"):
            bad.insert(0, f"family: preset {preset.family} != config.json {self.family}")
        if bad:
            raise SpecError([
                f"spec.model.architecture does not match spec.model.hfCheckpoint ({'; '.join(bad)}); "
                "pick the matching preset, set spec.model.overrides, or use architecture: auto"
            ])
