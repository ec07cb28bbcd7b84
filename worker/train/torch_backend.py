"""The torch trainer backend: a Hugging Face causal LM on CPU or GPUs, data-parallel over trainer ranks.

It is the reference implementation of ``TrainerBackend``: micro-batches come from the packer (dynamic batch
size) or a fixed micro-batch size, each is laid out as packed rows (or right-padded), and every loss term is a partial sum
divided by a normaliser computed once for the whole step, so how samples are packed never changes the
loss or the gradients.

With several trainer ranks (``torch.distributed`` initialised by ``TrainerActor``) every rank holds the whole
model, receives the whole step and computes its token-balanced share (``dp_shard``); the normaliser still
comes from the full list, so the ranks' partial gradients are SUMMED (not averaged) to the 1-rank gradient,
and every rank then takes the same optimizer step.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kuberl.worker.algo import losses
from kuberl.worker.algo.packing import pack_micro_batches
from kuberl.worker.levers import Levers
from kuberl.worker.random_init import random_hf_model, wants_random_init
from kuberl.worker.train import varlen_attention
from kuberl.worker.train.backend import common_backend_fields, needs_reference_model
from kuberl.worker.train.batch import TrainSample
from kuberl.worker.train.dp_shard import Shard, shard_for_rank, unshard
from kuberl.worker.train.row_packing import RowLayout, plan_rows, row_tensors, row_width
from kuberl.worker.train.token_logprobs import token_logprobs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TorchBackendConfig:
    """The slice of the resolved worker config this backend reads."""

    hf_checkpoint: str
    optimizer: dict[str, Any]
    loss: losses.LossConfig = field(default_factory=losses.LossConfig)
    reward_kl_coef: float = 0.0  # spec.algorithm.klCoef: the reward's KL term needs the reference too
    micro_batch_size: int = 1
    use_dynamic_batch_size: bool = False
    max_tokens_per_gpu: int | None = None
    log_probs_max_tokens_per_gpu: int | None = None
    ref_load: str | None = None
    device: str = "auto"
    num_rollout: int | None = None
    num_steps_per_rollout: int = 1
    # Engines report logprobs of the temperature-scaled distribution; the trainer must match (as slime).
    temperature: float = 1.0
    save_optim: bool = True  # spec.checkpoint.noSaveOptim inverted
    dtype: str | None = None  # torch dtype name of the weights; None: bfloat16 on CUDA, float32 on CPU
    # "auto": variable-length attention over packed rows where PyTorch's flash kernel runs (CUDA), else the
    # model's own attention over block-masked rows; "varlen" forces it (block-diagonal SDPA off CUDA);
    # "native" keeps the model's own.
    attention: str = "auto"

    @classmethod
    def from_worker_config(cls, config: Any) -> TorchBackendConfig:
        """Read the resolved worker config; refuse model parallelism, which only Megatron implements.

        Raises:
            SpecError: ``spec.perf`` asks for tensor/pipeline/context parallelism.
        """
        check_data_parallel_only(config)
        return cls(**common_backend_fields(config), device=config.device)


def check_data_parallel_only(config: Any) -> None:
    """The torch backend replicates the model on every rank: TP/PP/CP/EP sizes must all be 1."""
    sizes = {
        "tensorModelParallelSize": config.tensor_model_parallel_size,
        "pipelineModelParallelSize": config.pipeline_model_parallel_size,
        "contextParallelSize": config.context_parallel_size,
        "expertModelParallelSize": config.expert_model_parallel_size,
        "expertTensorParallelSize": config.expert_tensor_parallel_size,
    }
    wrong = [f"spec.perf.{k}={v}" for k, v in sizes.items() if v != 1]
    if wrong:
        from kuberl.errors import SpecError

        raise SpecError([
            f"{', '.join(wrong)}: the torch trainer backend is data-parallel only; set them to 1 or use "
            "spec.backends.trainer: megatron"
        ])


def dp_rank_and_size() -> tuple[int, int]:
    """This process's data-parallel rank and size: the default process group's, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


GRAD_BUCKET_ELEMENTS = 64 * 1024 * 1024  # gradients all-reduced per collective (256 MB in fp32)


def all_reduce_gradients(params: Sequence[torch.nn.Parameter]) -> None:
    """SUM every gradient over the DP ranks in flat buckets.

    A rank whose share did not touch a parameter (or had no sample) contributes zeros; a parameter no
    rank touched keeps ``grad = None``, as it would with one rank, so the optimizer skips it the same way.
    """
    device = params[0].device if params else torch.device("cpu")
    touched = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=device)
    dist.all_reduce(touched)
    live: list[torch.Tensor] = []
    for p, hit in zip(params, touched.tolist(), strict=True):
        if hit > 0:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            live.append(p.grad)
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for g in live:
        by_dtype.setdefault(g.dtype, []).append(g)
    for grads in by_dtype.values():  # same order on every rank: parameters are listed alike
        bucket: list[torch.Tensor] = []
        size = 0
        for g in grads:
            if bucket and size + g.numel() > GRAD_BUCKET_ELEMENTS:
                _all_reduce_flat(bucket)
                bucket, size = [], 0
            bucket.append(g)
            size += g.numel()
        if bucket:
            _all_reduce_flat(bucket)


def _all_reduce_flat(tensors: list[torch.Tensor]) -> None:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    if flat.dtype in (torch.bfloat16, torch.float16):
        flat = flat.float()  # sum 16-bit gradients in fp32, round once
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def skips_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Megatron's rule (slime and Megatron-LM train this way): biases and 1-D parameters (norm scales)
    are not decayed. The Megatron backend applies the same rule (``megatron_backend.weight_decay_for``)."""
    return name.endswith(".bias") or param.ndim == 1


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters as [decayed, not decayed] optimizer groups (empty groups left out)."""
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (plain if skips_weight_decay(name, p) else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def split_legacy_optimizer_state(
    saved: dict[str, Any], model: torch.nn.Module, groups: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Turn a one-group optimizer state (written before decay groups existed; its parameter ids are the
    positions in ``model.parameters()``) into one whose groups match ``groups``. Other states pass."""
    if len(saved["param_groups"]) != 1 or len(groups) == 1:
        return saved
    position = {id(p): i for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    hyper = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    return {
        "state": saved["state"],
        "param_groups": [{**hyper, "weight_decay": g["weight_decay"],
                          "params": [position[id(p)] for p in g["params"]]} for g in groups],
    }


def response_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The output layer when logits are exactly ``lm_head(hidden)`` (so it can run on response positions
    alone), else None: soft-capped or scaled logits (Gemma, Cohere) keep the model's own forward."""
    head = model.get_output_embeddings()
    cfg = model.config
    plain = type(head) is torch.nn.Linear and not getattr(cfg, "final_logit_softcapping", None) and (
        getattr(cfg, "logit_scale", None) in (None, 1.0)) and hasattr(model, model.base_model_prefix)
    return head if plain else None


def pick_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def lr_lambda(optimizer: dict[str, Any], total_steps: int | None):
    """Return the LR multiplier schedule: linear warm-up, then constant, linear or cosine decay."""
    warmup = int(optimizer.get("lr_warmup_iters", 0))
    style = optimizer.get("lr_decay_style", "constant")
    floor = optimizer.get("min_lr", 0.0) / optimizer["lr"]

    def schedule(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if style == "constant" or not total_steps:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if style == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return schedule


class TorchBackend:
    """Policy, optional frozen reference, optimizer and LR schedule, replicated on every DP rank."""

    def __init__(self, config: TorchBackendConfig) -> None:
        from transformers import AutoModelForCausalLM

        self.config = config
        self.levers = Levers.from_env()
        self.device = pick_device(config.device)
        self.dp_rank, self.dp_size = dp_rank_and_size()
        if config.dtype:
            dtype = getattr(torch, config.dtype)
        else:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        random_init = wants_random_init(config.hf_checkpoint)  # a throughput run's weightless model
        if random_init:
            self.model = random_hf_model(config.hf_checkpoint, dtype, seed=0)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(config.hf_checkpoint, dtype=dtype)
        self.model.to(self.device).train()
        self.varlen = self._wants_varlen(dtype) and varlen_attention.use_varlen(self.model)
        if config.attention == "varlen" and not self.varlen:
            raise ValueError("TorchBackendConfig.attention='varlen': the model has sliding-window attention "
                             "layers, which varlen attention does not implement; use 'auto' or 'native'")
        log.info("torch backend on %s (%s): %s attention", self.device, dtype,
                 "variable-length (one packed row per micro-batch)" if self.varlen
                 else getattr(self.model.config, "_attn_implementation", "default"))
        if self.dp_size > 1:
            self._broadcast_weights()
        self.ref_model = None
        if needs_reference_model(config.loss, config.reward_kl_coef):
            source = config.ref_load if config.ref_load and Path(config.ref_load).is_dir() else None
            if random_init and source is None:
                self.ref_model = random_hf_model(config.hf_checkpoint, dtype, seed=0).to(self.device).eval()
            else:
                self.ref_model = AutoModelForCausalLM.from_pretrained(
                    source or config.hf_checkpoint, dtype=dtype
                ).to(self.device).eval()
            self.ref_model.requires_grad_(False)
            if self.varlen:
                varlen_attention.use_varlen(self.ref_model)
        opt = config.optimizer
        groups = param_groups(self.model, opt["weight_decay"])
        if opt["type"] == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(groups, lr=opt["lr"])
        else:
            self.optimizer = torch.optim.AdamW(
                groups, lr=opt["lr"], betas=(opt["adam_beta1"], opt["adam_beta2"]), eps=opt["adam_eps"],
            )
        total = (config.num_rollout or 0) * config.num_steps_per_rollout or None
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(opt, total))
        self.steps = 0

    def _wants_varlen(self, dtype: torch.dtype) -> bool:
        choice = self.config.attention
        if choice not in ("auto", "varlen", "native"):
            raise ValueError(f"TorchBackendConfig.attention={choice!r}: expected auto, varlen or native")
        if choice == "auto":  # the flash kernel takes half precision only (fp32 references keep SDPA)
            return (self.levers.packed_sequences and self.levers.varlen_attention
                    and dtype in varlen_attention.HALF and varlen_attention.available_on(self.device))
        return choice == "varlen"

    def _broadcast_weights(self) -> None:
        """Start every rank from rank 0's weights (anything the checkpoint lacks is randomly initialised)."""
        with torch.no_grad():
            for p in self.model.parameters():
                dist.broadcast(p.data, src=0)

    def _share(self, samples: Sequence[TrainSample]) -> Shard[TrainSample]:
        return shard_for_rank(samples, self.dp_rank, self.dp_size)

    # ---- micro-batching -------------------------------------------------------------------------
    def _micro_batches(self, samples: Sequence[TrainSample], budget: int | None) -> list[list[int]]:
        lengths = [s.num_tokens for s in samples]
        if self.config.use_dynamic_batch_size and budget:
            return pack_micro_batches(lengths, budget)
        size = self.config.micro_batch_size
        return [list(range(i, min(i + size, len(samples)))) for i in range(0, len(samples), size)]

    def _forward(
        self, model: torch.nn.Module, samples: Sequence[TrainSample], with_entropy: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """One micro-batch -> per-sample response logprobs (R,) and entropies (R,).

        Packed rows (``Levers.packed_sequences``) or right-padded rows; then the output layer on the
        response positions only, chunked (``Levers.response_logits``), or full logits. All four ways
        give the same values (tests/worker/train/test_torch_backend_packed.py).
        """
        lengths = [s.num_tokens for s in samples]
        tokens = [s.tokens for s in samples]
        if self.levers.packed_sequences:
            impl = getattr(model.config, "_attn_implementation", None)
            layout = plan_rows(lengths, row_width(lengths, impl, sum(lengths)))
            input_ids, positions = row_tensors(tokens, layout)
            inputs = {"input_ids": input_ids.to(self.device), "position_ids": positions.to(self.device)}
            if impl == varlen_attention.NAME:  # boundaries computed once, not per layer
                inputs |= varlen_attention.row_segments(layout.rows, lengths, layout.width).kwargs(self.device)
        else:
            if getattr(model.config, "_attn_implementation", None) == varlen_attention.NAME:
                raise RuntimeError("varlen attention needs packed rows: enable the packed_sequences lever or "
                                   "set TorchBackendConfig.attention='native'")
            layout = RowLayout([[i] for i in range(len(samples))], max(lengths))
            input_ids = torch.zeros(len(samples), layout.width, dtype=torch.long)
            attention = torch.zeros(len(samples), layout.width, dtype=torch.long)
            for i, s in enumerate(samples):
                input_ids[i, : s.num_tokens] = torch.tensor(s.tokens)
                attention[i, : s.num_tokens] = 1
            inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention.to(self.device)}
        # Token t is predicted by position t-1: response tokens P..P+R-1 use positions P-1..P+R-2.
        offsets = layout.offsets(lengths)
        width = input_ids.shape[1]
        where, targets = [], []
        for i, s in enumerate(samples):
            row, col = offsets[i]
            first = row * width + col
            where.append(torch.arange(first + s.prompt_len - 1, first + s.num_tokens - 1))
            targets.append(torch.tensor(s.tokens[s.prompt_len :], dtype=torch.long))
        where_t = torch.cat(where).to(self.device)  # (N,)
        target_t = torch.cat(targets).to(self.device)  # (N,)
        head = response_head(model) if self.levers.response_logits else None
        if head is not None:
            base = getattr(model, model.base_model_prefix)
            hidden = base(**inputs, use_cache=False).last_hidden_state  # (rows, W, H)
            picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, where_t)  # (N, H)
            lp, ent = token_logprobs(picked, head, target_t, temperature=self.config.temperature)
        else:
            logits = model(**inputs, use_cache=False).logits  # (rows, W, V)
            picked = logits.reshape(-1, logits.shape[-1]).index_select(0, where_t)  # (N, V)
            if picked.dtype != torch.float64:
                picked = picked.float()
            if self.config.temperature != 1.0:
                picked = picked / self.config.temperature
            log_softmax = F.log_softmax(picked, dim=-1)
            lp = log_softmax.gather(-1, target_t[:, None]).squeeze(-1)
            ent = -(log_softmax.exp() * log_softmax).sum(-1)
        sizes = [s.response_len for s in samples]
        logprobs = list(lp.split(sizes))
        return logprobs, (list(ent.split(sizes)) if with_entropy else None)

    # ---- protocol ----------------------------------------------------------------------------------
    @torch.no_grad()
    def compute_logprobs(
        self, samples: Sequence[TrainSample], *, reference: bool = False
    ) -> list[list[float]]:
        model = self.ref_model if reference else self.model
        if model is None:
            raise RuntimeError("no reference model loaded (algorithm.useKlLoss is off)")
        share = self._share(samples)
        out: list[list[float]] = [[] for _ in share]
        budget = self.config.log_probs_max_tokens_per_gpu or self.config.max_tokens_per_gpu
        for group in self._micro_batches(share, budget):
            lps, _ = self._forward(model, [share[i] for i in group], with_entropy=False)
            for i, lp in zip(group, lps, strict=True):
                out[i] = lp.cpu().tolist()
        if self.dp_size == 1:
            return out
        parts: list[Any] = [None] * self.dp_size
        dist.all_gather_object(parts, (share.indices, out))
        return unshard(parts, len(samples))

    def train_step(self, samples: Sequence[TrainSample]) -> dict[str, float]:
        # The normaliser counts the FULL step (every rank's samples), so partial sums add up across ranks.
        normalizer = losses.LossNormalizer.from_masks(
            [s.loss_mask for s in samples], per_token=self.config.loss.per_token
        )
        share = self._share(samples)
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        with_entropy = True  # logged always; enters the loss only with entropyCoef > 0
        for group in self._micro_batches(share, self.config.max_tokens_per_gpu):
            mb = [share[i] for i in group]
            logprobs, entropies = self._forward(self.model, mb, with_entropy)
            loss, terms = losses.grpo_loss_sum(
                logprobs=logprobs,
                # No old logprobs: the step is the first on these weights, so the recomputed old
                # policy equals the current one (ratio 1 with gradient), as a separate pass would give.
                old_logprobs=[torch.tensor(s.old_logprobs) if s.old_logprobs is not None
                              else lp.detach() for s, lp in zip(mb, logprobs, strict=True)],
                advantages=[torch.tensor(s.advantages) for s in mb],
                loss_masks=[torch.tensor(s.loss_mask, dtype=torch.float32) for s in mb],
                rollout_logprobs=[torch.tensor(s.rollout_logprobs) for s in mb]
                if all(len(s.rollout_logprobs) == s.response_len for s in mb) else None,
                ref_logprobs=[torch.tensor(s.ref_logprobs) for s in mb]
                if all(s.ref_logprobs is not None for s in mb) else None,
                entropies=entropies,
                normalizer=normalizer,
                config=self.config.loss,
                device=self.device,
            )
            loss.backward()
            for key, value in terms.items():
                totals[key] = totals.get(key, 0.0) + float(value)
        if self.dp_size > 1:
            all_reduce_gradients([p for p in self.model.parameters() if p.requires_grad])
            totals = self._sum_over_ranks(totals)
        clip = self.config.optimizer.get("clip_grad", 0.0)
        params = [p for p in self.model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.steps += 1
        metrics = {f"train/{k}": v for k, v in totals.items()}
        metrics["train/grad_norm"] = float(grad_norm)
        metrics["train/lr"] = self.scheduler.get_last_lr()[0]
        return metrics

    def _sum_over_ranks(self, totals: dict[str, float]) -> dict[str, float]:
        """Add the ranks' metric partial sums (a rank without samples has none) into the step's values."""
        parts: list[Any] = [None] * self.dp_size
        dist.all_gather_object(parts, totals)
        merged: dict[str, float] = {}
        for part in parts:
            for key, value in part.items():
                merged[key] = merged.get(key, 0.0) + value
        return merged

    def named_weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        # named_parameters drops tied duplicates (lm_head.weight when tied to the embeddings), which
        # engines do not hold as separate parameters.
        for name, tensor in self.model.named_parameters():
            yield name, tensor.detach()

    def export_hf_checkpoint(self, directory: Path) -> None:
        """Rank 0 writes (every rank holds the same weights)."""
        if self.dp_rank == 0:
            self.model.save_pretrained(directory)

    def save(self, directory: Path) -> None:
        """Rank 0 writes the full state (weights are replicated), so any DP size can load it.

        Layout: ``model/`` (Hugging Face), ``trainer_state.pt`` (scheduler, step count, DP size) and,
        unless ``spec.checkpoint.noSaveOptim``, ``optimizer.pt``.
        """
        if self.dp_rank != 0:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / "model")
        torch.save(
            {"scheduler": self.scheduler.state_dict(), "steps": self.steps, "dp_size": self.dp_size},
            directory / "trainer_state.pt",
        )
        if self.config.save_optim:
            torch.save({"optimizer": self.optimizer.state_dict()}, directory / "optimizer.pt")

    def load(self, directory: Path) -> None:
        """Every rank reads the same files (the checkpoint lives on storage all trainer pods mount)."""
        from transformers import AutoModelForCausalLM

        if not (directory / "model").is_dir():
            from kuberl.errors import CheckpointError

            raise CheckpointError(
                f"{directory} holds no torch-backend checkpoint (no model/ folder); spec.checkpoint.load "
                "must name a checkpoint written by spec.backends.trainer: torch"
            )
        loaded = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=self.model.dtype)
        self.model.load_state_dict(loaded.state_dict())
        optim_file, state_file = directory / "optimizer.pt", directory / "trainer_state.pt"
        optim = torch.load(optim_file, weights_only=False) if optim_file.exists() else None
        # Checkpoints from before trainer_state.pt kept the scheduler and step count in optimizer.pt.
        state = torch.load(state_file, weights_only=False) if state_file.exists() else optim
        if state is not None:
            self.scheduler.load_state_dict(state["scheduler"])
            groups = len(self.optimizer.param_groups)
            if len(self.scheduler.base_lrs) != groups:  # a one-group checkpoint (before decay groups)
                self.scheduler.base_lrs = self.scheduler.base_lrs[:1] * groups
                self.scheduler._last_lr = self.scheduler._last_lr[:1] * groups  # type: ignore[attr-defined]
            self.steps = state["steps"]
        if optim is not None:
            self.optimizer.load_state_dict(split_legacy_optimizer_state(
                optim["optimizer"], self.model, self.optimizer.param_groups))
        else:
            # A fresh optimizer at the restored point of the LR schedule.
            for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True):
                group["lr"] = lr
            if self.dp_rank == 0:
                log.warning(
                    "%s holds no optimizer state (saved with spec.checkpoint.noSaveOptim: true): "
                    "resuming at step %d with a fresh optimizer", directory, self.steps,
                )
