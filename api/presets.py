"""Megatron architecture presets, so a user names `glm4-9b` instead of twenty model flags."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """The values Megatron needs explicitly (it cannot read them from a Hugging Face checkpoint)."""

    family: str  # weight-map family for HF <-> Megatron conversion: glm4, qwen2, llama
    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    num_query_groups: int
    vocab_size: int
    rotary_base: int = 10000
    rotary_percent: float = 1.0
    rotary_interleaved: bool = False
    norm_epsilon: float = 1e-6
    normalization: str = "RMSNorm"
    swiglu: bool = True
    add_qkv_bias: bool = False
    disable_bias_linear: bool = True
    post_self_attn_layernorm: bool = False  # GLM4 "sandwich" norms
    post_mlp_layernorm: bool = False
    untie_embeddings_and_output_weights: bool = True
    kv_channels: int | None = None
    max_position_embeddings: int = 32768

    def to_megatron_flags(self) -> list[str]:
        """Return Megatron's command-line flags for this architecture (as slime's model scripts do)."""
        flags = [
            "--num-layers", str(self.num_layers), "--hidden-size", str(self.hidden_size),
            "--ffn-hidden-size", str(self.ffn_hidden_size),
            "--num-attention-heads", str(self.num_attention_heads),
            "--group-query-attention", "--num-query-groups", str(self.num_query_groups),
            "--vocab-size", str(self.vocab_size), "--use-rotary-position-embeddings",
            "--rotary-base", str(self.rotary_base), "--normalization", self.normalization,
            "--norm-epsilon", f"{self.norm_epsilon:g}",
        ]
        if self.rotary_percent != 1.0:
            flags += ["--rotary-percent", f"{self.rotary_percent:g}"]
        if self.rotary_interleaved:
            flags.append("--rotary-interleaved")
        if self.swiglu:
            flags.append("--swiglu")
        if self.disable_bias_linear:
            flags.append("--disable-bias-linear")
        if self.add_qkv_bias:
            flags.append("--add-qkv-bias")
        if self.post_self_attn_layernorm:
            flags.append("--post-self-attn-layernorm")
        if self.post_mlp_layernorm:
            flags.append("--post-mlp-layernorm")
        if self.untie_embeddings_and_output_weights:
            flags.append("--untie-embeddings-and-output-weights")
        if self.kv_channels is not None:
            flags += ["--kv-channels", str(self.kv_channels)]
        return flags


PRESETS: dict[str, Architecture] = {
    # GLM-Z1-9B-0414 / GLM-4-9B-0414 (slime scripts/models/glm4-9B.sh).
    "glm4-9b": Architecture(
        family="glm4", num_layers=40, hidden_size=4096, ffn_hidden_size=13696,
        num_attention_heads=32, num_query_groups=2, vocab_size=151552, rotary_base=10000,
        rotary_percent=0.5, rotary_interleaved=True, norm_epsilon=1e-5, add_qkv_bias=True,
        post_self_attn_layernorm=True, post_mlp_layernorm=True,
    ),
    # Qwen2.5-7B-Instruct.
    "qwen2.5-7b": Architecture(
        family="qwen2", num_layers=28, hidden_size=3584, ffn_hidden_size=18944,
        num_attention_heads=28, num_query_groups=4, vocab_size=152064, rotary_base=1000000,
        add_qkv_bias=True,
    ),
    # Qwen2.5-0.5B-Instruct (small GPU smoke runs).
    "qwen2.5-0.5b": Architecture(
        family="qwen2", num_layers=24, hidden_size=896, ffn_hidden_size=4864,
        num_attention_heads=14, num_query_groups=2, vocab_size=151936, rotary_base=1000000,
        add_qkv_bias=True, untie_embeddings_and_output_weights=False,
    ),
    # Llama-3.1-8B.
    "llama3.1-8b": Architecture(
        family="llama", num_layers=32, hidden_size=4096, ffn_hidden_size=14336,
        num_attention_heads=32, num_query_groups=8, vocab_size=128256, rotary_base=500000,
        norm_epsilon=1e-5,
    ),
}

AUTO = "auto"


def resolve_architecture(name: str, overrides: dict[str, Any]) -> Architecture | None:
    """Return the preset ``name`` with ``overrides`` applied, or None for ``auto`` (read config.json).

    The name is validated by the spec (an enum of ``PRESETS`` plus ``auto``), so a lookup cannot fail here.
    """
    if name == AUTO:
        return None
    return replace(PRESETS[name], **overrides)
