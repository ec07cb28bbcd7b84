"""Hugging Face <-> Megatron-core weight maps for the dense decoder families kuberl trains.

Why not megatron-bridge: version 0.6.2 pins transformers <= 5.12.1 (the worker runs 5.17), requires
``megatron-core[dev,mlm]`` (Transformer Engine built from source), flashinfer 0.6.8 (SGLang 0.5.23 pins a
different one), and pulls wandb, mlflow, comet-ml and diffusers into the trainer image. For four dense
families the whole mapping is a name table plus three tensor permutations (fused QKV with GQA groups,
gate/up fusion, vocabulary padding) and the tensor-parallel split; written here as pure functions it is
CPU-testable permutation by permutation and has no dependency to keep in step.

Modules: ``shape`` (the architecture, read from config.json and checked against the spec's preset),
``maps`` (per-parameter maps and the TP split/merge), ``io`` (reading safetensors shards lazily and
writing an HF checkpoint).
"""

from kuberl.worker.train.hf_megatron.maps import (
    ParamMap,
    megatron_shards,
    merge_to_hf,
    param_maps,
    te_name,
)
from kuberl.worker.train.hf_megatron.shape import ModelShape, padded_vocab_size

__all__ = [
    "ModelShape",
    "ParamMap",
    "megatron_shards",
    "merge_to_hf",
    "padded_vocab_size",
    "param_maps",
    "te_name",
]
