"""Admission: the combinations a valid spec can still not run in a cluster, refused before any GPU is used.

The CEL rules (kuberl.api.rules, on the spec models) check what the apiserver can see: one object's
fields. Admission needs more: which backends this release has built, and the resolved configuration
(``auto`` means Megatron and SGLang in a cluster). The operator runs ``admission_problems`` before it
creates a RayJob (an error -> phase Failed, condition reason InvalidSpec, a Warning event, no RayJob) and
``kuberl validate`` prints the same lines; warnings name things known to go wrong later without stopping
the job.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath

from kuberl.api.job import RLTrainingJob
from kuberl.api.passthrough import SGLANG_SERVER, SMG_ROUTER, deprecated_keys
from kuberl.api.resolve import WorkerConfig, resolve


@dataclass(frozen=True)
class Implementation:
    """One trainer backend or rollout engine, and whether this release ships it."""

    built: bool
    needs_cuda: bool = False
    note: str = ""


# THE table of what this release can run. Mark a backend built=False while it is being written; the
# operator then refuses jobs that resolve to it, and the worker's defensive check agrees.
TRAINER_BACKENDS: dict[str, Implementation] = {
    "torch": Implementation(built=True, note="Hugging Face model, data-parallel ranks only"),
    "megatron": Implementation(built=True, note="Megatron-core: TP/PP/CP/EP"),
}
ROLLOUT_ENGINES: dict[str, Implementation] = {
    "sglang": Implementation(built=True, needs_cuda=True, note="SGLang servers (CUDA only)"),
    "embedded": Implementation(built=True, note="kuberl's HF engine: one device, no memory release"),
}
DEFAULT_GPUS_PER_NODE = 8  # the operator's RenderSettings.gpus_per_node default


def built_trainer_backends() -> tuple[str, ...]:
    return tuple(k for k, v in TRAINER_BACKENDS.items() if v.built)


def built_rollout_engines() -> tuple[str, ...]:
    return tuple(k for k, v in ROLLOUT_ENGINES.items() if v.built)


class Severity(StrEnum):
    ERROR = "error"  # the job cannot run: refused
    WARNING = "warning"  # it runs, but something is known to go wrong later


@dataclass(frozen=True)
class Context:
    """What an admission rule sees: the job, its in-cluster resolved config, the node size."""

    job: RLTrainingJob
    config: WorkerConfig
    gpus_per_node: int


@dataclass(frozen=True)
class AdmissionRule:
    """One rule: ``check`` returns the problem text (naming the fix) or None."""

    id: str
    severity: Severity
    field: str  # wire path of the field to change, e.g. spec.backends.trainer
    summary: str  # one line for the API reference
    check: Callable[[Context], str | None]


@dataclass(frozen=True)
class Problem:
    rule_id: str
    severity: Severity
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def _trainer_built(c: Context) -> str | None:
    kind = c.config.trainer_backend
    if TRAINER_BACKENDS.get(kind, Implementation(built=False)).built:
        return None
    auto = " (in a cluster 'auto' means megatron)" if c.job.spec.backends.trainer == "auto" else ""
    return (f"the {kind} trainer backend is not built in this release{auto}; set it to one of "
            f"{', '.join(built_trainer_backends())}")


def _engine_built(c: Context) -> str | None:
    kind = c.config.rollout_engine
    if ROLLOUT_ENGINES.get(kind, Implementation(built=False)).built:
        return None
    auto = " (in a cluster 'auto' means sglang)" if c.job.spec.backends.rollout == "auto" else ""
    return (f"the {kind} rollout engine is not built in this release{auto}; set it to one of "
            f"{', '.join(built_rollout_engines())}")


def _trainer_offload_not_implemented(c: Context) -> str | None:
    if not c.job.spec.placement.offload_train:  # only when the user asks for it (the default follows colocate)
        return None
    return ("offloading the trainer's memory while engines generate is not implemented yet: "
            "the trainer keeps its GPU memory during rollout, so leave the engines room with "
            "spec.sglang.serverArgs.memFractionStatic, or set offloadTrain: false to silence this")


def _torch_data_parallel_only(c: Context) -> str | None:
    if c.config.trainer_backend != "torch":
        return None
    p = c.job.spec.perf
    sizes = {
        "tensorModelParallelSize": p.tensor_model_parallel_size,
        "pipelineModelParallelSize": p.pipeline_model_parallel_size,
        "contextParallelSize": p.context_parallel_size,
        "expertModelParallelSize": p.expert_model_parallel_size,
        "expertTensorParallelSize": p.expert_tensor_parallel_size,
    }
    split = [f"{k}={v}" for k, v in sizes.items() if v > 1]
    if not split:
        return None
    return (f"the torch trainer only runs data-parallel ranks, but {', '.join(split)}; set them to 1 "
            "or use spec.backends.trainer: megatron")


def _engine_needs_cuda(c: Context) -> str | None:
    engine = ROLLOUT_ENGINES.get(c.config.rollout_engine)
    if engine is None or not engine.needs_cuda or c.config.device != "cpu":
        return None
    return (f"the {c.config.rollout_engine} rollout engine runs on CUDA GPUs only, but "
            "spec.backends.device is cpu; use spec.backends.rollout: embedded for CPU runs")


def _embedded_one_device(c: Context) -> str | None:
    if c.config.rollout_engine != "embedded" or c.config.gpus_per_engine == 1:
        return None
    return (f"the embedded engine runs on one device, but gpusPerEngine is {c.config.gpus_per_engine}; "
            "set it to 1 or use spec.backends.rollout: sglang")


def _colocated_engine_releases_memory(c: Context) -> str | None:
    if not c.config.colocate or c.config.rollout_engine != "embedded" or c.config.device == "cpu":
        return None
    return ("colocated engines must release their GPU memory while the trainer trains; the embedded "
            "engine cannot, so use spec.backends.rollout: sglang (or auto), or colocate: false")


def _engine_within_node(c: Context) -> str | None:
    per_engine = c.config.gpus_per_engine
    if c.config.colocate:
        per_pod = c.config.actor_num_gpus_per_node
        if per_pod % per_engine:
            return (f"colocated engines share the trainer pods' GPUs, so gpusPerEngine ({per_engine}) "
                    f"must divide placement.actorNumGpusPerNode ({per_pod}): an engine cannot span pods")
        return None
    if per_engine > c.gpus_per_node:
        return (f"an engine of {per_engine} GPUs would span nodes of {c.gpus_per_node} GPUs; kuberl "
                "starts single-node SGLang servers, so keep gpusPerEngine <= GPUs per node")
    return None


def _torch_ignores_megatron_knobs(c: Context) -> str | None:
    if c.config.trainer_backend != "torch":
        return None
    p = c.job.spec.perf
    ignored = []
    if p.sequence_parallel:
        ignored.append("sequenceParallel")
    if p.recompute.granularity is not None:
        ignored.append("recompute")
    if not ignored:
        return None
    return f"{' and '.join(ignored)} are Megatron settings; the torch trainer ignores them"


def _checkpoints_on_shared_storage(c: Context) -> str | None:
    save = c.job.spec.checkpoint.save
    if save is None:
        return None
    storage = c.job.spec.cluster.storage
    if storage is not None and PurePosixPath(save).is_relative_to(storage.mount_path):
        return None
    where = (f"spec.cluster.storage.mountPath ({storage.mount_path})" if storage
             else "a shared volume (spec.cluster.storage is unset)")
    return (f"checkpoints go to {save!r}, which is not under {where}: they are lost with the pod, and "
            "a retried or resumed job starts from scratch")


def _deprecated_passthrough(c: Context) -> str | None:
    s = c.job.spec.sglang
    old = [f"serverArgs.{k}" for k in deprecated_keys(s.server_args, SGLANG_SERVER)]
    old += [f"routerArgs.{k}" for k in deprecated_keys(s.router_args, SMG_ROUTER)]
    if not old:
        return None
    return f"{', '.join(old)} still work but are deprecated in the pinned SGLang/smg; use the new names"


ADMISSION_RULES: tuple[AdmissionRule, ...] = (
    AdmissionRule("trainer-backend-built", Severity.ERROR, "spec.backends.trainer",
                  "the resolved trainer backend is built in this release", _trainer_built),
    AdmissionRule("rollout-engine-built", Severity.ERROR, "spec.backends.rollout",
                  "the resolved rollout engine is built in this release", _engine_built),
    AdmissionRule("torch-data-parallel-only", Severity.ERROR, "spec.perf",
                  "the torch trainer has no tensor/pipeline/context/expert parallelism",
                  _torch_data_parallel_only),
    AdmissionRule("engine-needs-cuda", Severity.ERROR, "spec.backends.device",
                  "SGLang engines need CUDA GPUs", _engine_needs_cuda),
    AdmissionRule("embedded-engine-one-device", Severity.ERROR, "spec.sglang.gpusPerEngine",
                  "the embedded engine runs on one device", _embedded_one_device),
    AdmissionRule("colocated-engine-releases-memory", Severity.ERROR, "spec.placement.colocate",
                  "colocated GPU engines must be able to release memory (SGLang)",
                  _colocated_engine_releases_memory),
    AdmissionRule("engine-within-node", Severity.ERROR, "spec.sglang.gpusPerEngine",
                  "an engine fits in one pod (node, or trainer pod when colocated)",
                  _engine_within_node),
    AdmissionRule("torch-ignores-megatron-settings", Severity.WARNING, "spec.perf",
                  "sequenceParallel and recompute only apply to Megatron",
                  _torch_ignores_megatron_knobs),
    AdmissionRule("checkpoints-on-shared-storage", Severity.WARNING, "spec.checkpoint.save",
                  "checkpoints are written under the shared storage mount",
                  _checkpoints_on_shared_storage),
    AdmissionRule("trainer-offload-not-implemented", Severity.WARNING, "spec.placement.offloadTrain",
                  "trainer memory offload during rollout is not implemented yet",
                  _trainer_offload_not_implemented),
    AdmissionRule("deprecated-passthrough-args", Severity.WARNING, "spec.sglang",
                  "no deprecated SGLang/smg argument names", _deprecated_passthrough),
)


def admission_problems(
    job: RLTrainingJob, *, gpus_per_node: int = DEFAULT_GPUS_PER_NODE
) -> list[Problem]:
    """Every admission problem of a (schema- and CEL-valid) job as it would run in a cluster."""
    ctx = Context(job, resolve(job, in_cluster=True), gpus_per_node)
    problems = []
    for rule in ADMISSION_RULES:
        message = rule.check(ctx)
        if message is not None:
            problems.append(Problem(rule.id, rule.severity, rule.field, message))
    return problems


def admission_errors(job: RLTrainingJob, *, gpus_per_node: int = DEFAULT_GPUS_PER_NODE) -> list[str]:
    """The refusing problems as ``field: message`` lines (empty: the job may run)."""
    return [str(p) for p in admission_problems(job, gpus_per_node=gpus_per_node)
            if p.severity is Severity.ERROR]
