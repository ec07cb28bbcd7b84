"""Building megatron-core GPT models for the supported families: parallel state, layer specs, config.

Kept apart from the backend so that ``kuberl convert`` and the tests build exactly the model the trainer
trains. Everything here is megatron-core's own modules; GLM4's sandwich norms are megatron's
``SelfAttention``/``MLP`` with one extra norm of the spec's own norm class applied to their output.
"""

from __future__ import annotations

import datetime
import functools
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch

from kuberl.errors import SpecError
from kuberl.worker.net import free_port
from kuberl.worker.train.hf_megatron.shape import ModelShape, padded_vocab_size

log = logging.getLogger(__name__)


def transformer_engine_available() -> bool:
    """True when Transformer Engine's torch extension imports (the worker image installs it)."""
    try:
        import transformer_engine.pytorch  # noqa: F401  # pyright: ignore[reportMissingImports]
    except Exception:  # ImportError, or an extension built for another torch/CUDA
        return False
    return True


@dataclass(frozen=True)
class Parallelism:
    """The Megatron parallel sizes of ``spec.perf`` (DP is what remains of the world size)."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    sequence_parallel: bool = False

    def check(self, world_size: int) -> None:
        model_parallel = self.tp * self.pp * self.cp
        problems = []
        if world_size % model_parallel:
            problems.append(
                f"spec.perf: tensor x pipeline x context parallel = {model_parallel} does not divide "
                f"the {world_size} trainer GPUs (spec.placement.actorNumGpusPerNode x actorNumNodes)"
            )
        if self.pp > 1:
            problems.append(
                "spec.perf.pipelineModelParallelSize > 1 is not supported by the Megatron backend yet; "
                "use tensor parallel (tensorModelParallelSize) instead"
            )
        if self.cp > 1:
            problems.append(
                "spec.perf.contextParallelSize > 1 is not supported by the Megatron backend yet "
                "(it needs Transformer Engine's THD attention with CP); set it to 1"
            )
        if problems:
            raise SpecError(problems)


def init_parallel(par: Parallelism, *, device: torch.device, seed: int = 1234) -> None:
    """Initialise torch.distributed (a 1-rank group when nobody did) and Megatron's parallel state.

    The trainer group (contract 1) initialises the default group before the backend is built when
    there are several ranks; a single trainer, a test or ``kuberl convert`` gets a private 1-rank group.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state, tensor_parallel

    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank() if dist.is_initialized() else 0))
        torch.cuda.set_device(local % torch.cuda.device_count())
    if not dist.is_initialized():
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:  # torchrun
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        else:
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1,
                timeout=datetime.timedelta(minutes=30),
            )
    par.check(dist.get_world_size())
    if not parallel_state.model_parallel_is_initialized():
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=par.tp,
            pipeline_model_parallel_size=par.pp,
            context_parallel_size=par.cp,
        )
    elif parallel_state.get_tensor_model_parallel_world_size() != par.tp:
        raise RuntimeError("Megatron parallel state already initialised with another TP size")
    if device.type == "cuda":
        tensor_parallel.model_parallel_cuda_manual_seed(seed)


def release_parallel(*, default_group: bool = True) -> None:
    """Undo ``init_parallel`` while the interpreter is whole: Megatron's groups, then (``default_group``)
    torch.distributed's default group.

    megatron-core's ``destroy_model_parallel`` forgets some of its own group globals (0.19: the
    intra-partial data-parallel groups with CP), and a group still referenced keeps gloo's worker threads
    running into interpreter shutdown, where they can crash the process (pytorch/pytorch#190489). So every
    module global of ``parallel_state`` that still holds a group is dropped as well, and the rotary
    embeddings' ``lru_cache``d forwards, which keep every model's rotary module (and its CP group) alive,
    are cleared.
    """
    import sys

    import torch.distributed as dist
    from megatron.core import parallel_state

    parallel_state.destroy_model_parallel()
    for name, value in list(vars(parallel_state).items()):
        if name.startswith("_") and name.isupper() and _holds_group(value):
            setattr(parallel_state, name, None)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("megatron.core.models.common.embeddings"):
            for cls in [v for v in vars(module).values() if isinstance(v, type)]:
                for attr in vars(cls).values():
                    if isinstance(attr, functools._lru_cache_wrapper):
                        attr.cache_clear()
    if default_group and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _holds_group(value: Any) -> bool:
    import torch.distributed as dist

    if isinstance(value, dist.ProcessGroup):
        return True
    if type(value) in (list, tuple):
        return any(_holds_group(v) for v in value)
    if type(value) is dict:
        return any(_holds_group(v) for v in value.values())
    return False


def transformer_config(
    shape: ModelShape,
    par: Parallelism,
    *,
    dtype: torch.dtype,
    recompute: dict[str, Any] | None = None,
    use_cpu_initialization: bool = False,
) -> Any:
    """Return the megatron-core ``TransformerConfig`` of ``shape`` (no dropout: RL wants exact logprobs)."""
    import torch.nn.functional as F
    from megatron.core.transformer.transformer_config import TransformerConfig

    recompute = recompute or {}
    return TransformerConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_attention_heads,
        num_query_groups=shape.num_query_groups,
        kv_channels=shape.head_dim,
        tensor_model_parallel_size=par.tp,
        pipeline_model_parallel_size=par.pp,
        context_parallel_size=par.cp,
        sequence_parallel=par.sequence_parallel,
        normalization="RMSNorm",
        layernorm_epsilon=shape.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=shape.qkv_bias,
        qk_layernorm=shape.qk_layernorm,
        rotary_interleaved=shape.rotary_interleaved,
        apply_rope_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        gradient_accumulation_fusion=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        params_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        pipeline_dtype=dtype,
        use_cpu_initialization=use_cpu_initialization,
        # Gradients are SUMMED over DP ranks: the loss carries the global normaliser (losses.py).
        calculate_per_token_loss=True,
        recompute_granularity=recompute.get("granularity"),
        recompute_method=recompute.get("method"),
        recompute_num_layers=recompute.get("num_layers"),
    )


def _replicated_norm_state(
    module: Any, norm: Any, name: str, prefix: str, sharded_offsets: tuple, metadata: dict | None,
    sharded: dict[str, Any],
) -> dict[str, Any]:
    """Replace ``name``'s entries of ``sharded`` by ones marked replicated over the TP group.

    A norm's weight is the same on every TP rank, so each rank's ShardedTensor must carry its TP rank
    in ``replica_id`` (only TP rank 0 writes). megatron's MLP.sharded_state_dict builds its children's
    entries without its TP group, which marks a plain norm as TP rank 0 on every rank (two writers).
    """
    from megatron.core.transformer.utils import sharded_state_dict_default

    tp_group = getattr(module, "tp_group", None)
    if tp_group is None:
        from megatron.core import parallel_state

        tp_group = parallel_state.get_tensor_model_parallel_group()
    sub = f"{prefix}{name}."
    fixed = sharded_state_dict_default(norm, sub, sharded_offsets, metadata, tp_group=tp_group)
    out = {k: v for k, v in sharded.items() if not k.startswith(sub)}
    out.update(fixed)
    return out


def _sandwich_classes(norm_cls: Any, attn_base: type, mlp_base: type) -> tuple[type, type]:
    """GLM4's attention / MLP: the spec's megatron modules plus a post-norm of the spec's norm class."""

    class SandwichSelfAttention(attn_base):  # type: ignore[valid-type,misc]
        """SelfAttention whose output is RMS-normalised before the residual add (GLM4)."""

        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self.post_self_attn_layernorm = norm_cls(
                config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon
            )

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            output, bias = super().forward(*args, **kwargs)
            assert bias is None, "GLM4 has no attention output bias"
            return self.post_self_attn_layernorm(output), None

        def sharded_state_dict(
            self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None
        ) -> dict[str, Any]:
            sharded = super().sharded_state_dict(prefix, sharded_offsets, metadata)
            return _replicated_norm_state(self, self.post_self_attn_layernorm, "post_self_attn_layernorm",
                                          prefix, sharded_offsets, metadata, sharded)

    class SandwichMLP(mlp_base):  # type: ignore[valid-type,misc]
        """MLP whose output is RMS-normalised before the residual add (GLM4)."""

        def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(config, *args, **kwargs)
            self.post_mlp_layernorm = norm_cls(
                config=config, hidden_size=config.hidden_size, eps=config.layernorm_epsilon
            )

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            output, bias = super().forward(*args, **kwargs)
            assert bias is None, "GLM4 has no MLP output bias"
            return self.post_mlp_layernorm(output), None

        def sharded_state_dict(
            self, prefix: str = "", sharded_offsets: tuple = (), metadata: dict | None = None
        ) -> dict[str, Any]:
            sharded = super().sharded_state_dict(prefix, sharded_offsets, metadata)
            return _replicated_norm_state(self, self.post_mlp_layernorm, "post_mlp_layernorm",
                                          prefix, sharded_offsets, metadata, sharded)

    return SandwichSelfAttention, SandwichMLP


def layer_spec(shape: ModelShape, use_te: bool) -> Any:
    """Return the GPT layer spec for ``shape``: Transformer Engine's when ``use_te``, else local."""
    from megatron.core.models.gpt.gpt_layer_specs import (
        get_gpt_layer_local_spec,
        get_gpt_layer_with_transformer_engine_spec,
    )

    if use_te:
        from megatron.core.extensions.transformer_engine import TENorm

        spec = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=shape.qk_layernorm)
        norm_cls: Any = TENorm
    else:
        from megatron.core.transformer.torch_norm import WrappedTorchNorm

        spec = get_gpt_layer_local_spec(qk_layernorm=shape.qk_layernorm, normalization="RMSNorm")
        norm_cls = WrappedTorchNorm
    if shape.sandwich_norms:
        attn = spec.submodules.self_attention
        mlp = spec.submodules.mlp  # a partial of <MLP class>.as_mlp_submodule in megatron-core 0.19
        mlp_base = mlp.func.__self__ if isinstance(mlp, functools.partial) else mlp.module
        attn_cls, mlp_cls = _sandwich_classes(norm_cls, attn.module, mlp_base)
        attn.module = attn_cls
        if isinstance(mlp, functools.partial):
            spec.submodules.mlp = functools.partial(mlp_cls.as_mlp_submodule, *mlp.args, **mlp.keywords)
        else:
            mlp.module = mlp_cls
    return spec


def build_gpt_model(
    shape: ModelShape,
    par: Parallelism,
    *,
    dtype: torch.dtype,
    use_te: bool,
    recompute: dict[str, Any] | None = None,
    device: torch.device,
) -> Any:
    """Build this rank's shard of the GPT model (weights random until loaded)."""
    from megatron.core.models.gpt import GPTModel

    config = transformer_config(
        shape, par, dtype=dtype, recompute=recompute, use_cpu_initialization=device.type != "cuda"
    )
    model = GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(shape, use_te),
        vocab_size=padded_vocab_size(shape.vocab_size, par.tp),
        max_sequence_length=shape.max_position_embeddings,
        pre_process=True,
        post_process=True,
        parallel_output=True,
        share_embeddings_and_output_weights=shape.tie_embeddings,
        position_embedding_type="rope",
        rotary_percent=shape.rotary_percent,
        rotary_base=int(shape.rotary_base),
        rope_scaling=shape.rope_scaling_factor is not None,
        rope_scaling_factor=shape.rope_scaling_factor or 8.0,
    )
    return model.to(device=device, dtype=dtype)


# ---- weights in and out ------------------------------------------------------------------------------


def _local_params(model: Any, shape: ModelShape) -> dict[str, torch.nn.Parameter]:
    """Parameters under the maps' local-spec names (wrapper prefixes stripped; TE names accepted)."""
    from kuberl.worker.train.hf_megatron.maps import param_maps, te_name

    while hasattr(model, "module") and not hasattr(model, "decoder"):
        model = model.module
    params = dict(model.named_parameters())
    out: dict[str, torch.nn.Parameter] = {}
    for m in param_maps(shape):
        for candidate in (m.megatron, te_name(m.megatron)):
            if candidate in params:
                out[m.megatron] = params[candidate]
                break
    return out


def load_hf_weights(model: Any, shape: ModelShape, hf_dir: str, tp_rank: int, tp_size: int) -> None:
    """Copy an HF checkpoint into this rank's shard of ``model`` (each rank reads what it needs)."""
    from kuberl.errors import CheckpointError
    from kuberl.worker.train.hf_megatron.io import HFTensorReader
    from kuberl.worker.train.hf_megatron.maps import megatron_shards, param_maps

    reader = HFTensorReader(hf_dir)
    params = _local_params(model, shape)
    maps = param_maps(shape)
    missing = [m.megatron for m in maps if m.megatron not in params]
    if missing:
        raise CheckpointError(f"Megatron model lacks parameters {missing[:5]} for family {shape.family}")
    with torch.no_grad():
        for m in maps:
            shard = megatron_shards(m, [reader.get(n) for n in m.hf], shape, tp_size)[tp_rank]
            p = params[m.megatron]
            if tuple(p.shape) != tuple(shard.shape):
                raise CheckpointError(
                    f"{m.megatron}: checkpoint gives {tuple(shard.shape)}, model holds {tuple(p.shape)}"
                )
            p.copy_(shard.to(device=p.device, dtype=p.dtype))


def iter_hf_weights(model: Any, shape: ModelShape, tp_group: Any, *, grads: bool = False):
    """Yield (HF name, full tensor) for every weight; COLLECTIVE over the TP group (all ranks get all).

    With ``grads`` the tensors are the accumulated gradients (``main_grad`` under DDP), mapped the same
    way, for parity tests.
    """
    import torch.distributed as dist

    from kuberl.worker.train.hf_megatron.maps import merge_to_hf, param_maps, partition_dim

    params = _local_params(model, shape)
    tp = dist.get_world_size(tp_group) if tp_group is not None else 1
    for m in param_maps(shape):
        p = params[m.megatron]
        local = (p.main_grad if hasattr(p, "main_grad") else p.grad) if grads else p
        if local is None:
            local = torch.zeros_like(p)
        local = local.detach()
        if tp > 1 and partition_dim(m) is not None:
            parts = [torch.empty_like(local) for _ in range(tp)]
            dist.all_gather(parts, local.contiguous(), group=tp_group)
        else:
            parts = [local] * tp
        yield from zip(m.hf, merge_to_hf(m, parts, shape), strict=True)
