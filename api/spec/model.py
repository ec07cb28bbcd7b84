"""spec.model: which model to train and its Megatron architecture (a preset name plus overrides)."""

from __future__ import annotations

from pydantic import Field, field_validator

from kuberl.api.base import SpecModel
from kuberl.api.presets import AUTO, PRESETS


class ArchitectureOverrides(SpecModel):
    """Megatron architecture values that win over the preset (e.g. a rotary base that differs in a family)."""

    num_layers: int | None = Field(None, ge=1, description="Transformer layers (Megatron --num-layers).")
    hidden_size: int | None = Field(None, ge=1, description="Hidden size (--hidden-size).")
    ffn_hidden_size: int | None = Field(None, ge=1, description="MLP hidden size (--ffn-hidden-size).")
    num_attention_heads: int | None = Field(None, ge=1, description="Attention heads.")
    num_query_groups: int | None = Field(None, ge=1, description="KV heads under GQA.")
    kv_channels: int | None = Field(None, ge=1, description="Head dimension if not hidden/heads.")
    vocab_size: int | None = Field(None, ge=1, description="Vocabulary size.")
    max_position_embeddings: int | None = Field(None, ge=1, description="Longest position.")
    rotary_base: int | None = Field(None, ge=1, description="RoPE base (--rotary-base).")
    rotary_percent: float | None = Field(None, gt=0, le=1, description="Share of head dim rotated.")
    norm_epsilon: float | None = Field(None, gt=0, description="RMSNorm/LayerNorm epsilon.")
    untie_embeddings_and_output_weights: bool | None = Field(None, description="Separate LM head.")


class ModelSpec(SpecModel):
    """The Hugging Face checkpoint (for SGLang and the tokenizer) and the trainer's architecture."""

    hf_checkpoint: str = Field(
        ...,
        min_length=1,
        description="Hugging Face checkpoint directory (or hub id) used by the engines and the tokenizer.",
    )
    architecture: str = Field(
        AUTO,
        json_schema_extra={"enum": [AUTO, *sorted(PRESETS)]},
        description=(
            "Architecture preset name (e.g. glm4-9b, qwen2.5-7b) giving Megatron's model flags; "
            "'auto' reads them from the checkpoint's config.json."
        ),
    )
    overrides: ArchitectureOverrides = Field(
        default_factory=ArchitectureOverrides,
        description="Architecture values that override the preset.",
    )

    @field_validator("architecture")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        if value != AUTO and value not in PRESETS:
            raise ValueError(
                f"unknown architecture preset {value!r}: use one of {', '.join(sorted(PRESETS))} "
                "or 'auto' (read from the checkpoint's config.json)"
            )
        return value
