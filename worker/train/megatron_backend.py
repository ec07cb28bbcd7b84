"""The Megatron-core trainer backend: TP / SP / DP (and recompute, distributed optimizer) on CUDA ranks.

Every rank receives the full sample list (contract 1). Each data-parallel rank takes its share with a
pure function, packs it into micro-batches of ``maxTokensPerGpu`` tokens (or fixed micro-batch sizes),
and computes the same per-micro-batch partial losses as the torch backend (``losses.policy_loss_sum``
with the step's global ``LossNormalizer`` from the FULL list). Gradients are summed over DP ranks
(``calculate_per_token_loss``: no 1/DP averaging), so the step's loss and gradients do not depend on how
samples are split over ranks and micro-batches. Logits are gathered over tensor-parallel ranks and go
through the same logprob/entropy functions as the torch backend, at the rollout temperature.

Layer spec: Transformer Engine's when it imports (packed THD sequences), else megatron's local spec
(right-padded micro-batches: causal attention never lets a real token see the right padding).
Pipeline and context parallelism are refused with a SpecError for now (see ``Parallelism.check``).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from kuberl.errors import CheckpointError, SpecError
from kuberl.worker.algo import losses
from kuberl.worker.algo.packing import (
    fixed_micro_batches,
    pack_micro_batches,
    pack_sequences,
    plan_step,
)
from kuberl.worker.random_init import wants_random_init
from kuberl.worker.train.backend import common_backend_fields, needs_reference_model
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.dp_shard import shard_for_rank
from kuberl.worker.train.hf_megatron.shape import ModelShape
from kuberl.worker.train.megatron_cpu import megatron_on, on_device
from kuberl.worker.train.megatron_model import (
    Parallelism,
    build_gpt_model,
    init_parallel,
    iter_hf_weights,
    load_hf_weights,
    transformer_engine_available,
)
from kuberl.worker.train.torch_backend import lr_lambda

log = logging.getLogger(__name__)

DIST_CKPT_MARKER = "metadata.json"  # written by megatron's dist_checkpointing
NO_OPTIMIZER_MARKER = "kuberl-no-optimizer"  # saved under spec.checkpoint.noSaveOptim


@dataclass(frozen=True)
class MegatronBackendConfig:
    """The slice of the resolved worker config this backend reads."""

    hf_checkpoint: str
    optimizer: dict[str, Any]
    loss: losses.LossConfig = field(default_factory=losses.LossConfig)
    reward_kl_coef: float = 0.0  # spec.algorithm.klCoef: the reward's KL term needs the reference too
    architecture: Any = None  # kuberl.api.presets.Architecture or None (auto)
    micro_batch_size: int = 1
    use_dynamic_batch_size: bool = False
    max_tokens_per_gpu: int | None = None
    log_probs_max_tokens_per_gpu: int | None = None
    balance_data: bool = False
    ref_load: str | None = None
    num_rollout: int | None = None
    num_steps_per_rollout: int = 1
    temperature: float = 1.0
    save_optim: bool = True  # spec.checkpoint.noSaveOptim inverted
    tensor_model_parallel_size: int = 1
    sequence_parallel: bool = False
    pipeline_model_parallel_size: int = 1
    context_parallel_size: int = 1
    recompute: dict[str, Any] = field(default_factory=dict)
    seed: int = 1234
    dtype: str = "bfloat16"  # "float32" for parity tests
    use_transformer_engine: bool | None = None  # None: when importable
    logits_chunk_size: int | None = 4096
    device: str = "cuda"  # "cpu": gloo and fp32, megatron's CUDA-only calls redirected (megatron_cpu.py)

    @classmethod
    def from_worker_config(cls, config: Any) -> MegatronBackendConfig:
        experts = {"expertModelParallelSize": config.expert_model_parallel_size,
                   "expertTensorParallelSize": config.expert_tensor_parallel_size}
        wrong = [f"spec.perf.{k}={v}" for k, v in experts.items() if v != 1]
        if wrong:  # the presets are dense models: expert parallelism has nothing to split
            from kuberl.errors import SpecError

            raise SpecError([f"{', '.join(wrong)}: the Megatron backend's model presets (glm4, qwen2, "
                             "qwen3, llama) have no experts; set them to 1"])
        from kuberl.worker.train.torch_backend import pick_device

        device = pick_device(config.device).type  # spec.backends.device: auto = CUDA when present
        return cls(
            **common_backend_fields(config),
            device=device,
            dtype="bfloat16" if device == "cuda" else "float32",  # as the torch backend
            architecture=config.architecture,
            balance_data=config.balance_data,
            tensor_model_parallel_size=config.tensor_model_parallel_size,
            sequence_parallel=config.sequence_parallel,
            pipeline_model_parallel_size=config.pipeline_model_parallel_size,
            context_parallel_size=config.context_parallel_size,
            recompute=dict(config.recompute),
            seed=config.seed,
        )


def rank_micro_batches(
    samples: Sequence[TrainSample], dp_rank: int, dp_size: int, *, budget: int | None,
    micro_batch_size: int = 1, balance_data: bool = False, cp_size: int = 1,
) -> list[list[int]]:
    """This DP rank's micro-batches (indices into ``samples``): a pure function of the full list, so
    every rank agrees on the split without communicating. ``budget`` None means fixed micro-batches.

    With ``balance_data`` and dynamic batching the step plan packs first and spreads micro-batches by
    equal-count Karmarkar-Karp; otherwise the rank's share comes from ``shard_for_rank`` and is packed
    locally (first-fit decreasing under ``budget * cp_size``).
    """
    lengths = [s.num_tokens for s in samples]
    if balance_data and budget:
        plan = plan_step(lengths, dp_size=dp_size, use_dynamic_batch_size=True,
                         max_tokens_per_gpu=budget, cp_size=cp_size, balance_data=True)
        return [list(mb) for mb in plan.ranks[dp_rank]]
    idx = list(shard_for_rank(samples, dp_rank, dp_size).indices)
    if budget:
        local = pack_micro_batches([lengths[i] for i in idx], budget * cp_size)
    else:
        local = fixed_micro_batches(len(idx), micro_batch_size)
    return [[idx[j] for j in mb] for mb in local]


def uses_distributed_optimizer(optimizer: dict[str, Any]) -> bool:
    """Adam(W) runs under megatron's distributed optimizer; plain SGD does not.

    Megatron's DistributedOptimizer only accepts optimizers whose state it knows how to checkpoint
    (Adam-like ``exp_avg``/``exp_avg_sq``, or an ``init_state_fn``); momentum-free SGD has no state to
    shard, so it runs as megatron's replicated (Float16/FP32) optimizer wrapper: same update, and the
    only thing lost is ZeRO-1 sharding of an optimizer state that does not exist.
    """
    return optimizer["type"] != "sgd"


def untie_step_counters(optimizer: torch.optim.Optimizer) -> int:
    """Give every parameter's ``step`` its own tensor; return how many entries were re-allocated.

    Without Transformer Engine/apex, megatron-core 0.19.2's ``DistributedOptimizer.load_state_dict``
    stores ONE step tensor in the state of every parameter, and torch's Adam(W) increments each
    parameter's ``step`` in place, so after a load one optimizer step advances the shared counter once
    per parameter and Adam's bias correction no longer matches an uninterrupted run. Runs after every
    load; a no-op when the counters are already distinct.
    """
    seen: set[int] = set()
    untied = 0
    for state in optimizer.state.values():
        step = state.get("step")
        if not isinstance(step, torch.Tensor):
            continue
        if id(step) in seen:
            state["step"] = step.clone()
            untied += 1
        seen.add(id(state["step"]))
    return untied


def init_adam_state(optimizer: torch.optim.Optimizer) -> int:
    """Give every parameter without state the state torch's Adam(W) would create at its first step
    (``step`` 0, zero moments); return how many were initialised.

    Without Transformer Engine/apex, megatron-core 0.19.2's ``DistributedOptimizer.state_dict`` reads
    ``step`` from every parameter's state (``assert len(steps) == 1``), so a backend that has not stepped
    yet -- a resume in a new process -- could neither load nor save a checkpoint. Adam's first step
    from this state is the same as from no state at all.
    """
    added = 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            if optimizer.state.get(p):
                continue
            optimizer.state[p] = {
                "step": torch.zeros((), dtype=torch.float32),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }
            if group.get("amsgrad"):
                optimizer.state[p]["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            added += 1
    return added


def weight_decay_for(group: dict[str, Any], weight_decay: float) -> float:
    """The decay of one megatron parameter group: ``weight_decay x wd_mult``.

    megatron puts biases and 1-D parameters (norms) in groups with ``wd_mult`` 0 (slime and Megatron-LM
    train that way), but only its ``OptimizerParamScheduler`` multiplies it in; we set LR and decay
    ourselves, so without this every group would decay with the full ``weight_decay``.
    """
    return weight_decay * float(group.get("wd_mult", 1.0))


def is_dist_checkpoint(path: str | Path | None) -> bool:
    """True for a directory written by megatron's ``dist_checkpointing`` (ours or ``kuberl convert``)."""
    return path is not None and (Path(path) / DIST_CKPT_MARKER).is_file()


class MegatronBackend:
    """Policy (DDP + distributed optimizer), optional frozen reference, LR schedule; one per rank."""

    def __init__(self, config: MegatronBackendConfig) -> None:
        if config.device == "cuda" and not torch.cuda.is_available():
            raise SpecError([
                "spec.backends.trainer: megatron on CUDA found no GPU on the trainer; set "
                "spec.backends.device: cpu (gloo, fp32) or give the trainer GPUs"
            ])
        self.config = config
        self.device = torch.device(config.device)
        with megatron_on(self.device):
            self._setup()

    def _setup(self) -> None:
        import torch.distributed as dist
        from megatron.core import parallel_state as ps

        config = self.config
        self.dtype = torch.float32 if config.dtype == "float32" else torch.bfloat16
        self.use_te = (
            transformer_engine_available() if config.use_transformer_engine is None
            else config.use_transformer_engine
        )
        sp = config.sequence_parallel and config.tensor_model_parallel_size > 1
        if sp and not self.use_te:
            log.warning("spec.perf.sequenceParallel needs Transformer Engine's norms; running without "
                        "sequence parallel (same math, more activation memory)")
            sp = False
        self.par = Parallelism(
            tp=config.tensor_model_parallel_size, pp=config.pipeline_model_parallel_size,
            cp=config.context_parallel_size, sequence_parallel=sp,
        )
        init_parallel(self.par, device=self.device, seed=config.seed)
        log.info("megatron backend: %s layer spec, TP=%d SP=%s DP=%d",
                 "Transformer Engine" if self.use_te else "local (no Transformer Engine)",
                 self.par.tp, sp, ps.get_data_parallel_world_size())
        self.tp_group = ps.get_tensor_model_parallel_group()
        self.dp_group = ps.get_data_parallel_group()
        self.tp_rank = ps.get_tensor_model_parallel_rank()
        self.dp_rank = ps.get_data_parallel_rank()
        self.dp_size = ps.get_data_parallel_world_size()
        self.rank = dist.get_rank()

        self.shape = ModelShape.from_hf_dir(config.hf_checkpoint)
        self.shape.check_preset(config.architecture)
        self.shape.check_tensor_parallel(self.par.tp)

        self.model = self._build(trainable=True)
        # A throughput run's weightless model (kuberl.worker.random_init) keeps megatron's seeded init.
        random_init = wants_random_init(config.hf_checkpoint)
        if is_dist_checkpoint(config.ref_load):
            self._load_model_dist(self.model.module, Path(config.ref_load))  # type: ignore[arg-type]
        elif random_init:
            log.warning("%s: random init (no weights, random-init marker)", config.hf_checkpoint)
        else:
            load_hf_weights(self.model.module, self.shape, config.hf_checkpoint, self.tp_rank, self.par.tp)
        self.ref_model = None
        if needs_reference_model(config.loss, config.reward_kl_coef):
            self.ref_model = self._build(trainable=False)
            if is_dist_checkpoint(config.ref_load):
                self._load_model_dist(self.ref_model, Path(config.ref_load))  # type: ignore[arg-type]
            else:
                source = config.ref_load if config.ref_load and Path(config.ref_load).is_dir() else None
                if source is not None or not random_init:
                    load_hf_weights(self.ref_model, self.shape, source or config.hf_checkpoint,
                                    self.tp_rank, self.par.tp)
            self.ref_model.eval().requires_grad_(False)
        self.optimizer = self._build_optimizer()
        # The DDP buffers copied params at construction; the distributed optimizer keeps fp32 main
        # params: both must see the loaded weights.
        self.optimizer.reload_model_params()
        total = (config.num_rollout or 0) * config.num_steps_per_rollout or None
        self.schedule = lr_lambda(config.optimizer, total)
        self.steps = 0

    # ---- construction -------------------------------------------------------------------------------
    def _build(self, *, trainable: bool) -> Any:
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

        module = build_gpt_model(
            self.shape, self.par, dtype=self.dtype, use_te=self.use_te,
            recompute=self.config.recompute if trainable else None, device=self.device,
        )
        if not trainable:
            return module
        ddp = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True, overlap_grad_reduce=False,
            use_distributed_optimizer=uses_distributed_optimizer(self.config.optimizer),
        )
        return DistributedDataParallel(config=module.config, ddp_config=ddp, module=module)

    def _build_optimizer(self) -> Any:
        from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

        opt = self.config.optimizer
        clip = float(opt.get("clip_grad", 0.0))
        cfg = OptimizerConfig(
            optimizer="sgd" if opt["type"] == "sgd" else "adam",
            lr=opt["lr"], min_lr=opt.get("min_lr", 0.0), weight_decay=opt["weight_decay"],
            adam_beta1=opt.get("adam_beta1", 0.9), adam_beta2=opt.get("adam_beta2", 0.999),
            adam_eps=opt.get("adam_eps", 1e-8), sgd_momentum=0.0,
            # Clipping off = a bound no norm reaches, so the norm is still computed and reported.
            clip_grad=clip if clip > 0 else 1e30,
            bf16=self.dtype == torch.bfloat16, params_dtype=self.dtype,
            use_distributed_optimizer=uses_distributed_optimizer(opt),
        )
        return get_megatron_optimizer(cfg, [self.model])

    # ---- data ---------------------------------------------------------------------------------------
    def _my_micro_batches(self, samples: Sequence[TrainSample], budget: int | None) -> list[list[int]]:
        return rank_micro_batches(
            samples, self.dp_rank, self.dp_size,
            budget=budget if self.config.use_dynamic_batch_size else None,
            micro_batch_size=self.config.micro_batch_size, balance_data=self.config.balance_data,
            cp_size=self.par.cp,
        )

    def _forward(
        self, model: Any, samples: Sequence[TrainSample], with_entropy: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """Per-sample response logprobs (R,) and entropies (R,) of one micro-batch, full vocabulary."""
        from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

        if self.use_te:
            from megatron.core.packed_seq_params import PackedSeqParams

            packed = pack_sequences([s.tokens for s in samples], pad_to_multiple=self.par.tp)
            cu = packed.cu_seqlens.to(self.device)
            params = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu,
                                     max_seqlen_q=packed.max_seqlen, max_seqlen_kv=packed.max_seqlen)
            ids = packed.input_ids.to(self.device)[None]
            logits = model(input_ids=ids, position_ids=packed.position_ids.to(self.device)[None],
                           attention_mask=None, packed_seq_params=params)[0]  # (N, V/tp)
            pos, tgt = packed.response_index([s.prompt_len for s in samples])
            rows, targets = logits[pos.to(self.device)], ids[0, tgt.to(self.device)]
        else:
            B, T = len(samples), max(s.num_tokens for s in samples)
            T = -(-T // self.par.tp) * self.par.tp
            ids = torch.zeros(B, T, dtype=torch.long)
            for i, s in enumerate(samples):
                ids[i, : s.num_tokens] = torch.tensor(s.tokens)
            ids = ids.to(self.device)
            position = torch.arange(T, device=self.device)[None].expand(B, -1)
            # Right padding + causal attention: real tokens never see the padding.
            logits = model(input_ids=ids, position_ids=position, attention_mask=None)  # (B, T, V/tp)
            pos = torch.cat([torch.arange(s.prompt_len - 1, s.num_tokens - 1) + i * T
                             for i, s in enumerate(samples)]).to(self.device)
            flat = logits.reshape(B * T, -1)
            rows, targets = flat[pos], ids.reshape(-1)[pos + 1]
        full = gather_from_tensor_model_parallel_region(rows)[:, : self.shape.vocab_size]  # (M, V)
        lp = losses.logprobs_from_logits(full, targets, temperature=self.config.temperature,
                                         chunk_size=self.config.logits_chunk_size)
        ent = (losses.entropy_from_logits(full, temperature=self.config.temperature,
                                          chunk_size=self.config.logits_chunk_size)
               if with_entropy else None)
        sizes = [s.response_len for s in samples]
        return list(lp.split(sizes)), (list(ent.split(sizes)) if ent is not None else None)

    def _gather_dp(self, mine: dict[int, list[float]], n: int) -> list[list[float]]:
        import torch.distributed as dist

        parts: list[Any] = [None] * self.dp_size
        dist.all_gather_object(parts, mine, group=self.dp_group)
        out: list[list[float]] = [[] for _ in range(n)]
        for part in parts:
            for i, v in part.items():
                out[i] = v
        return out

    # ---- protocol -----------------------------------------------------------------------------------
    @on_device
    @torch.no_grad()
    def compute_logprobs(
        self, samples: Sequence[TrainSample], *, reference: bool = False
    ) -> list[list[float]]:
        model = self.ref_model if reference else self.model
        if model is None:
            raise RuntimeError("no reference model loaded (algorithm.useKlLoss is off)")
        model.eval()
        budget = self.config.log_probs_max_tokens_per_gpu or self.config.max_tokens_per_gpu
        mine: dict[int, list[float]] = {}
        for group in self._my_micro_batches(samples, budget):
            lps, _ = self._forward(model, [samples[i] for i in group], with_entropy=False)
            for i, lp in zip(group, lps, strict=True):
                mine[i] = lp.float().cpu().tolist()
        if not reference:
            model.train()
        return self._gather_dp(mine, len(samples))

    @on_device
    def accumulate_grads(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        """Zero and fill the gradients of one step (all micro-batches, reduced over DP); return metrics."""
        import torch.distributed as dist
        from megatron.core.distributed import finalize_model_grads

        normalizer = losses.LossNormalizer.from_masks(
            [s.loss_mask for s in samples], per_token=self.config.loss.per_token
        )
        config = self.config.loss
        self.model.train()
        self.model.zero_grad_buffer()
        self.optimizer.zero_grad()
        outputs: list[losses.LossOutput] = []
        for group in self._my_micro_batches(samples, self.config.max_tokens_per_gpu):
            mb = [samples[i] for i in group]
            logprobs, entropies = self._forward(self.model, mb, with_entropy=True)
            dev = self.device
            out = losses.policy_loss_sum(
                logprobs=logprobs,
                old_logprobs=[torch.tensor(s.old_logprobs, device=dev) if s.old_logprobs is not None
                              else lp.detach() for s, lp in zip(mb, logprobs, strict=True)],
                advantages=[torch.tensor(s.advantages, device=dev) for s in mb],
                loss_masks=[torch.tensor(s.loss_mask, dtype=torch.float32, device=dev) for s in mb],
                rollout_logprobs=[torch.tensor(s.rollout_logprobs, device=dev) for s in mb]
                if all(len(s.rollout_logprobs) == s.response_len for s in mb) else None,
                ref_logprobs=[torch.tensor(s.ref_logprobs, device=dev) for s in mb]
                if all(s.ref_logprobs is not None for s in mb) else None,
                entropies=entropies,
                normalizer=normalizer,
                config=config,
            )
            out.loss.backward()
            outputs.append(out)
        finalize_model_grads([self.model])
        # Metrics: partial sums add over DP ranks; extremes combine with max/min.
        keys = sorted({k for o in outputs for k in o.sums})
        sums = torch.stack([sum((o.sums[k] for o in outputs if k in o.sums),
                                torch.zeros((), device=self.device)) for k in keys]) if keys else None
        if sums is not None:
            dist.all_reduce(sums, group=self.dp_group)
        merged = {k: float(v) for k, v in zip(keys, sums.tolist() if sums is not None else [], strict=True)}
        extremes = losses.merge_metrics([losses.LossOutput(loss=o.loss, maxima=o.maxima, minima=o.minima)
                                         for o in outputs])
        for key, op in (("ratio_max", dist.ReduceOp.MAX), ("ratio_min", dist.ReduceOp.MIN)):
            fill = float("-inf") if op == dist.ReduceOp.MAX else float("inf")
            t = torch.tensor(extremes.get(key, fill), device=self.device, dtype=torch.float64)
            dist.all_reduce(t, op=op, group=self.dp_group)
            if abs(float(t)) != float("inf"):
                merged[key] = float(t)
        return merged

    @on_device
    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        totals = self.accumulate_grads(samples)
        lr = self.config.optimizer["lr"] * self.schedule(self.steps)
        wd = float(self.config.optimizer["weight_decay"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
            group["weight_decay"] = weight_decay_for(group, wd)
        ok, grad_norm, _ = self.optimizer.step()
        if not ok:
            log.warning("megatron optimizer skipped the step (non-finite gradients)")
        self.steps += 1
        metrics = {f"train/{k}": v for k, v in totals.items()}
        metrics["train/grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["train/lr"] = lr
        return metrics

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """COLLECTIVE over the TP group: every rank gets every full HF-named tensor."""
        yield from iter_hf_weights(self.model.module, self.shape, self.tp_group)

    def named_grads(self) -> Iterator[tuple[str, torch.Tensor]]:
        """The last step's gradients under HF names (COLLECTIVE; exact on DP=1, for parity tests)."""
        yield from iter_hf_weights(self.model.module, self.shape, self.tp_group, grads=True)

    @on_device
    def export_hf_checkpoint(self, directory: Path) -> None:
        """COLLECTIVE: every rank gathers, global rank 0 writes."""
        import torch.distributed as dist

        from kuberl.worker.train.hf_megatron.io import write_hf_checkpoint

        weights = self.named_weights()
        if self.rank == 0:
            write_hf_checkpoint(directory, weights, self.config.hf_checkpoint)
        else:
            for _ in weights:
                pass
        dist.barrier()

    # ---- dist checkpoints ---------------------------------------------------------------------------
    def _sharded_state(self, *, loading: bool, with_optimizer: bool = True) -> dict[str, Any]:
        model_sd = self.model.module.sharded_state_dict()
        state: dict[str, Any] = {"model": model_sd, "steps": self.steps}
        if with_optimizer:
            if uses_distributed_optimizer(self.config.optimizer):
                for opt in getattr(self.optimizer, "chained_optimizers", [self.optimizer]):
                    init_adam_state(opt.optimizer)  # a backend that has not stepped yet (resume)
            state["optimizer"] = self.optimizer.sharded_state_dict(
                model_sd, is_loading=loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"}
            )
        return state

    @on_device
    def save(self, directory: Path) -> None:
        """COLLECTIVE: model + optimizer (+ schedule step) in megatron's dist-checkpoint format.

        Written to ``<dir>.tmp`` and renamed by rank 0 after every rank finished, so a crash never leaves
        a half checkpoint under the final name.
        """
        import torch.distributed as dist
        from megatron.core import dist_checkpointing

        tmp = directory.with_name(directory.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        dist.barrier()
        dist_checkpointing.save(self._sharded_state(loading=False, with_optimizer=self.config.save_optim), str(tmp))
        if self.rank == 0 and not self.config.save_optim:  # spec.checkpoint.noSaveOptim: load() must know
            (tmp / NO_OPTIMIZER_MARKER).touch()
        dist.barrier()
        if self.rank == 0:
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
        dist.barrier()

    @on_device
    def load(self, directory: Path) -> None:
        """COLLECTIVE: restore what ``save`` wrote (any DP size; same TP).

        A checkpoint saved under ``spec.checkpoint.noSaveOptim`` (the ``kuberl-no-optimizer`` marker)
        restores the model and the schedule step; the optimizer is then rebuilt from scratch, so the
        result does not depend on what this backend did before the load.
        """
        from megatron.core import dist_checkpointing

        if not is_dist_checkpoint(directory):
            raise CheckpointError(f"{directory} is not a Megatron dist checkpoint (no {DIST_CKPT_MARKER})")
        with_optimizer = not (directory / NO_OPTIMIZER_MARKER).exists()
        state = dist_checkpointing.load(
            self._sharded_state(loading=True, with_optimizer=with_optimizer), str(directory)
        )
        self.model.module.load_state_dict(state["model"])
        if with_optimizer:
            self._load_optimizer_state(state["optimizer"])
        else:  # spec.checkpoint.noSaveOptim: a fresh optimizer, as a new process would have
            self.optimizer = self._build_optimizer()
            # bf16: the fp32 main params are the optimizer's own copies; they must hold the loaded weights.
            self.optimizer.reload_model_params()
        self.steps = int(state["steps"])

    def _load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Restore the optimizer, then untie the Adam step counters megatron's loader shares
        (``untie_step_counters``; without it a resumed run's Adam bias correction is wrong)."""
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

        inner = getattr(self.optimizer, "chained_optimizers", [self.optimizer])
        try:
            if len(inner) != 1 or not isinstance(inner[0], DistributedOptimizer) or "param_state" not in state:
                self.optimizer.load_state_dict(state)
            else:
                self._load_distributed_optimizer_state(inner[0], state)
        finally:
            for opt in inner:
                torch_opt = getattr(opt, "optimizer", None)
                if isinstance(torch_opt, torch.optim.Optimizer):
                    untie_step_counters(torch_opt)

    @staticmethod
    def _load_distributed_optimizer_state(dist_opt: Any, state: dict[str, Any]) -> None:
        """Works around megatron-core 0.19.2 with torch's AdamW (no TE/apex).

        Megatron's DistributedOptimizer first loads torch's per-parameter state (each entry gets
        torch's ``step`` tensor), then copies the checkpointed parameter state into every TENSOR state
        entry, but its reshardable loaders drop ``step`` from the source, so the copy raises
        ``KeyError: 'step'``. We run the same two public stages ourselves and hold torch's ``step``
        aside during the second one (it was already restored by the first).
        """
        param_state = state.pop("param_state")
        kind = state.pop("param_state_sharding_type")
        dist_opt.load_state_dict(state)  # param groups, torch state incl. step, grad scaler
        torch_state = dist_opt.optimizer.state
        held = {p: torch_state[p].pop("step") for p in list(torch_state) if "step" in torch_state[p]}
        try:
            loaders = {
                "fully_reshardable": dist_opt.load_parameter_state_from_fully_reshardable,
                "fully_sharded_model_space": dist_opt.load_parameter_state_from_fs_model_space,
                "dp_reshardable": dist_opt.load_parameter_state_from_dp_reshardable,
                "dp_zero_gather_scatter": dist_opt.load_parameter_state_from_dp_zero,
            }
            loaders[kind](param_state)
        finally:
            for p, step in held.items():
                torch_state[p]["step"] = step

    def _load_model_dist(self, module: Any, directory: Path) -> None:
        """Load only the model part of a dist checkpoint (refLoad, or a converted HF checkpoint)."""
        from megatron.core import dist_checkpointing

        state = dist_checkpointing.load({"model": module.sharded_state_dict()}, str(directory))
        module.load_state_dict(state["model"])
