"""Translate a validated RLTrainingJob into the worker's resolved configuration.

This is the one place where defaults that depend on other fields are derived (global batch size, eval
sampling inherited from rollout, engine count, data-parallel size, backends), so the driver never re-derives
them. ``to_slime_flags`` shows the same values in slime's vocabulary; a test compares it with the reference
workload's shell script.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from kuberl.api.job import RLTrainingJob
from kuberl.api.passthrough import SGLANG_SERVER, SMG_ROUTER, to_flags
from kuberl.api.presets import Architecture, resolve_architecture
from kuberl.api.spec import RLTrainingJobSpec, RolloutEngine, TrainerBackend


@dataclass(frozen=True)
class EvalSet:
    name: str
    path: str
    input_key: str
    label_key: str | None
    rm_type: str | None


@dataclass(frozen=True)
class WorkerConfig:
    """Every value the worker driver needs, fully derived. Plain data: serialisable with ``to_dict``."""

    job_name: str
    namespace: str | None
    # model and checkpoints
    hf_checkpoint: str
    architecture: Architecture | None
    ref_load: str | None
    load: str | None
    save: str | None
    save_interval: int | None
    keep_last: int | None
    save_optim: bool
    # data and rewards
    prompt_data: str
    input_key: str
    label_key: str | None
    metadata_key: str
    apply_chat_template: bool
    shuffle: bool
    seed: int
    max_prompt_len: int | None
    rm_type: str | None
    custom_rm_path: str | None
    rm_url: str | None
    group_rm: bool
    # run length and batch sizes
    num_rollout: int | None
    num_epoch: int | None
    rollout_batch_size: int
    n_samples_per_prompt: int
    global_batch_size: int
    num_steps_per_rollout: int
    micro_batch_size: int
    balance_data: bool
    # sampling
    max_response_len: int
    max_context_len: int | None
    sampling: dict[str, Any]
    # dynamic sampling and partial rollout
    over_sampling_batch_size: int
    dynamic_sampling_filter_path: str | None
    partial_rollout: bool
    mask_offpolicy_in_partial_rollout: bool
    buffer_filter_path: str | None
    custom_generate_function_path: str | None
    # eval
    eval_interval: int | None
    eval_sets: list[EvalSet]
    n_samples_per_eval_prompt: int
    eval_max_response_len: int
    eval_max_prompt_len: int | None
    eval_sampling: dict[str, Any]
    skip_eval_before_train: bool
    # algorithm and optimizer
    algorithm: dict[str, Any]
    optimizer: dict[str, Any]
    # parallelism and packing
    tensor_model_parallel_size: int
    sequence_parallel: bool
    pipeline_model_parallel_size: int
    context_parallel_size: int
    expert_model_parallel_size: int
    expert_tensor_parallel_size: int
    data_parallel_size: int
    recompute: dict[str, Any]
    use_dynamic_batch_size: bool
    max_tokens_per_gpu: int | None
    log_probs_max_tokens_per_gpu: int | None
    # placement and engines
    actor_num_nodes: int
    actor_num_gpus_per_node: int
    actor_num_gpus: int
    rollout_num_gpus: int
    colocate: bool
    offload_train: bool
    offload_rollout: bool
    gpus_per_engine: int
    num_engines: int
    sglang_server_args: list[str]
    router_args: list[str]
    server_concurrency: int
    router_request_timeout_secs: int
    trainer_backend: str
    rollout_engine: str
    device: str
    # the pods' shared volume (spec.cluster.storage.mountPath); the disk weight sync writes under it
    storage_path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_slime_flags(self) -> dict[str, Any]:
        """The same values as slime command-line flags (``True`` for a bare flag)."""
        return _slime_flags(self)


def camel_to_flag(key: str) -> str:
    """``memFractionStatic`` -> ``--mem-fraction-static``."""
    return "--" + re.sub(r"(?<!^)(?=[A-Z])", "-", key).lower()


def args_to_flags(args: dict[str, Any]) -> list[str]:
    """Turn a camelCase passthrough map into CLI flags: ``True`` -> bare flag, ``False``/None -> omitted."""
    flags: list[str] = []
    for key, value in sorted(args.items()):
        if value is False or value is None:
            continue
        flags.append(camel_to_flag(key))
        if value is not True:
            flags.append(str(value))
    return flags


def _in_cluster_default(choice: str, cluster: str, local: str, in_cluster: bool) -> str:
    return (cluster if in_cluster else local) if choice == "auto" else choice


def resolve(job: RLTrainingJob, *, in_cluster: bool = True) -> WorkerConfig:
    """Return the fully derived worker configuration of a validated job.

    ``in_cluster`` picks the production backends (Megatron, SGLang) for ``auto``; ``kuberl train`` on a laptop
    passes False and gets the torch trainer and the embedded engine.
    """
    s: RLTrainingJobSpec = job.spec
    r, e, p, pl = s.rollout, s.eval, s.perf, s.placement
    samples_per_rollout = r.batch_size * r.n_samples_per_prompt
    if r.global_batch_size is not None:
        global_batch_size = r.global_batch_size
    else:
        global_batch_size = samples_per_rollout // (r.num_steps_per_rollout or 1)
    num_steps = max(1, samples_per_rollout // global_batch_size)
    actor_gpus = pl.actor_num_nodes * pl.actor_num_gpus_per_node
    rollout_gpus = actor_gpus if pl.colocate else (pl.rollout_num_gpus or 0)
    model_parallel = p.tensor_model_parallel_size * p.pipeline_model_parallel_size * p.context_parallel_size
    sampling = {
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": r.top_k,
        "stop": list(r.stop),
        "stop_token_ids": list(r.stop_token_ids),
        "skip_special_tokens": r.skip_special_tokens,
    }
    eval_sampling = {
        **sampling,
        "temperature": e.temperature if e.temperature is not None else r.temperature,
        "top_p": e.top_p if e.top_p is not None else r.top_p,
        "top_k": e.top_k if e.top_k is not None else r.top_k,
    }
    algorithm = s.algorithm.model_dump(mode="json")
    if algorithm["eps_clip_high"] is None:
        algorithm["eps_clip_high"] = algorithm["eps_clip"]
    return WorkerConfig(
        job_name=job.metadata.name,
        namespace=job.metadata.namespace,
        hf_checkpoint=s.model.hf_checkpoint,
        architecture=resolve_architecture(
            s.model.architecture, s.model.overrides.model_dump(exclude_none=True)
        ),
        ref_load=s.checkpoint.ref_load,
        load=s.checkpoint.load or s.checkpoint.ref_load,
        save=s.checkpoint.save,
        save_interval=s.checkpoint.save_interval,
        keep_last=s.checkpoint.keep_last,
        save_optim=not s.checkpoint.no_save_optim,
        prompt_data=r.prompt_data,
        input_key=r.input_key,
        label_key=r.label_key,
        metadata_key=r.metadata_key,
        apply_chat_template=r.apply_chat_template,
        shuffle=r.shuffle,
        seed=r.seed,
        max_prompt_len=r.max_prompt_len,
        rm_type=r.rm_type.value if r.rm_type else None,
        custom_rm_path=r.custom_rm_path,
        rm_url=r.rm_url,
        group_rm=r.group_rm,
        num_rollout=r.num_rollout,
        num_epoch=r.num_epoch,
        rollout_batch_size=r.batch_size,
        n_samples_per_prompt=r.n_samples_per_prompt,
        global_batch_size=global_batch_size,
        num_steps_per_rollout=num_steps,
        micro_batch_size=r.micro_batch_size,
        balance_data=r.balance_data,
        max_response_len=r.max_response_len,
        max_context_len=r.max_context_len,
        sampling=sampling,
        over_sampling_batch_size=r.over_sampling_batch_size or r.batch_size,
        dynamic_sampling_filter_path=r.dynamic_sampling_filter_path,
        partial_rollout=r.partial_rollout,
        mask_offpolicy_in_partial_rollout=r.mask_offpolicy_in_partial_rollout,
        buffer_filter_path=r.buffer_filter_path,
        custom_generate_function_path=r.custom_generate_function_path,
        eval_interval=e.interval,
        eval_sets=[
            EvalSet(
                name=d.name,
                path=d.path,
                input_key=d.input_key or r.input_key,
                label_key=d.label_key or r.label_key,
                rm_type=(d.rm_type or r.rm_type).value if (d.rm_type or r.rm_type) else None,
            )
            for d in e.datasets
        ],
        n_samples_per_eval_prompt=e.n_samples_per_eval_prompt,
        eval_max_response_len=e.max_response_len or r.max_response_len,
        eval_max_prompt_len=e.max_prompt_len or r.max_prompt_len,
        eval_sampling=eval_sampling,
        skip_eval_before_train=e.skip_eval_before_train,
        algorithm=algorithm,
        optimizer=s.optimizer.model_dump(mode="json"),
        tensor_model_parallel_size=p.tensor_model_parallel_size,
        sequence_parallel=p.sequence_parallel,
        pipeline_model_parallel_size=p.pipeline_model_parallel_size,
        context_parallel_size=p.context_parallel_size,
        expert_model_parallel_size=p.expert_model_parallel_size,
        expert_tensor_parallel_size=p.expert_tensor_parallel_size,
        data_parallel_size=actor_gpus // model_parallel,
        recompute=p.recompute.model_dump(mode="json", exclude_none=True),
        use_dynamic_batch_size=p.use_dynamic_batch_size,
        max_tokens_per_gpu=p.max_tokens_per_gpu,
        log_probs_max_tokens_per_gpu=p.log_probs_max_tokens_per_gpu or p.max_tokens_per_gpu,
        actor_num_nodes=pl.actor_num_nodes,
        actor_num_gpus_per_node=pl.actor_num_gpus_per_node,
        actor_num_gpus=actor_gpus,
        rollout_num_gpus=rollout_gpus,
        colocate=pl.colocate,
        # slime: --colocate implies both offloads unless told otherwise.
        offload_train=pl.offload_train if pl.offload_train is not None else pl.colocate,
        offload_rollout=pl.offload_rollout if pl.offload_rollout is not None else pl.colocate,
        gpus_per_engine=s.sglang.gpus_per_engine,
        num_engines=max(1, rollout_gpus // s.sglang.gpus_per_engine),
        sglang_server_args=to_flags(s.sglang.server_args, SGLANG_SERVER),
        router_args=to_flags(s.sglang.router_args, SMG_ROUTER),
        server_concurrency=s.sglang.server_concurrency,
        router_request_timeout_secs=s.sglang.router_request_timeout_secs,
        trainer_backend=_in_cluster_default(
            s.backends.trainer, TrainerBackend.MEGATRON, TrainerBackend.TORCH, in_cluster
        ),
        rollout_engine=_in_cluster_default(
            s.backends.rollout, RolloutEngine.SGLANG, RolloutEngine.EMBEDDED, in_cluster
        ),
        device=s.backends.device,
        storage_path=s.cluster.storage.mount_path if s.cluster.storage is not None else None,
    )


def _slime_flags(c: WorkerConfig) -> dict[str, Any]:
    a, o = c.algorithm, c.optimizer
    flags: dict[str, Any] = {
        "--hf-checkpoint": c.hf_checkpoint,
        "--ref-load": c.ref_load,
        "--load": c.load,
        "--save": c.save,
        "--save-interval": c.save_interval,
        "--prompt-data": c.prompt_data,
        "--input-key": c.input_key,
        "--label-key": c.label_key,
        "--apply-chat-template": c.apply_chat_template,
        "--rollout-shuffle": c.shuffle,
        "--rm-type": c.rm_type,
        "--custom-rm-path": c.custom_rm_path,
        "--num-rollout": c.num_rollout,
        "--rollout-batch-size": c.rollout_batch_size,
        "--n-samples-per-prompt": c.n_samples_per_prompt,
        "--rollout-max-response-len": c.max_response_len,
        "--rollout-temperature": c.sampling["temperature"],
        "--num-steps-per-rollout": c.num_steps_per_rollout,
        "--global-batch-size": c.global_batch_size,
        "--balance-data": c.balance_data,
        "--eval-interval": c.eval_interval,
        # slime takes NAME PATH pairs.
        "--eval-prompt-data": " ".join(f"{s.name} {s.path}" for s in c.eval_sets) or None,
        "--n-samples-per-eval-prompt": c.n_samples_per_eval_prompt if c.eval_interval else None,
        "--eval-max-response-len": c.eval_max_response_len if c.eval_interval else None,
        "--eval-top-p": c.eval_sampling["top_p"] if c.eval_interval else None,
        "--tensor-model-parallel-size": c.tensor_model_parallel_size,
        "--sequence-parallel": c.sequence_parallel,
        "--pipeline-model-parallel-size": c.pipeline_model_parallel_size,
        "--context-parallel-size": c.context_parallel_size,
        "--expert-model-parallel-size": c.expert_model_parallel_size,
        "--expert-tensor-parallel-size": c.expert_tensor_parallel_size,
        "--recompute-granularity": c.recompute.get("granularity"),
        "--recompute-method": c.recompute.get("method"),
        "--recompute-num-layers": c.recompute.get("num_layers"),
        "--use-dynamic-batch-size": c.use_dynamic_batch_size,
        "--max-tokens-per-gpu": c.max_tokens_per_gpu,
        "--advantage-estimator": a["advantage_estimator"],
        "--use-kl-loss": a["use_kl_loss"],
        "--kl-loss-coef": a["kl_loss_coef"],
        "--kl-loss-type": a["kl_loss_type"],
        "--entropy-coef": a["entropy_coef"],
        "--eps-clip": a["eps_clip"],
        "--eps-clip-high": a["eps_clip_high"],
        "--optimizer": o["type"],
        "--lr": o["lr"],
        "--lr-decay-style": o["lr_decay_style"],
        "--weight-decay": o["weight_decay"],
        "--adam-beta1": o["adam_beta1"],
        "--adam-beta2": o["adam_beta2"],
        "--rollout-num-gpus-per-engine": c.gpus_per_engine,
        "--actor-num-nodes": c.actor_num_nodes,
        "--actor-num-gpus-per-node": c.actor_num_gpus_per_node,
        "--rollout-num-gpus": None if c.colocate else c.rollout_num_gpus,
        "--colocate": c.colocate,
        "--over-sampling-batch-size": c.over_sampling_batch_size
        if c.dynamic_sampling_filter_path
        else None,
        "--dynamic-sampling-filter-path": c.dynamic_sampling_filter_path,
        "--partial-rollout": c.partial_rollout,
    }
    if c.architecture is not None:
        flags["--rotary-base"] = c.architecture.rotary_base
    flags.update(
        {f"--sglang-{k.removeprefix('--')}": v for k, v in _pairs(c.sglang_server_args).items()}
    )
    return {k: v for k, v in flags.items() if v is not None and v is not False}


def _pairs(flags: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    i = 0
    while i < len(flags):
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            out[flags[i]] = flags[i + 1]
            i += 2
        else:
            out[flags[i]] = True
            i += 1
    return out
