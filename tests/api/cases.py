"""Manifests for validation tests, shared by the pydantic tests and the real-apiserver tests.

Each bad case breaks exactly one rule of one layer:
- ``schema``: OpenAPI schema (types, enums, bounds, patterns, unknown fields), checked by the apiserver and pydantic;
- ``cel``: a cross-field rule declared once in kuberl.api with a CEL and a Python form;
- ``pydantic``: only checkable outside the apiserver: the passthrough serverArgs/routerArgs, checked against
  the pinned SGLang's and smg's argument lists (the operator refuses them at admission).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def valid_manifest(name: str = "glm4-9b-dapo-math") -> dict[str, Any]:
    """Return a fresh copy of the reference example manifest."""
    return yaml.safe_load((EXAMPLES / "glm4-9b-dapo-math.yaml").read_text())


def _with(path: str, value: Any, *, delete: bool = False, base: dict | None = None) -> dict[str, Any]:
    manifest = copy.deepcopy(base) if base is not None else valid_manifest()
    keys = path.split(".")
    node = manifest
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if delete:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value
    return manifest


def _chain(*edits: tuple[str, Any]) -> dict[str, Any]:
    manifest = valid_manifest()
    for path, value in edits:
        manifest = _with(path, value, delete=value is _DELETE, base=manifest)
    return manifest


_DELETE = object()


@dataclass(frozen=True)
class BadCase:
    id: str
    manifest: dict[str, Any]
    field: str  # the wire path kuberl validate names
    message: str  # substring of the message in every layer that checks it
    layer: str  # "schema" | "cel" | "pydantic"
    rule_id: str | None = None  # for cel cases: the kuberl.api Rule id


BAD_CASES: list[BadCase] = [
    # --- CEL: cross-field rules ---
    BadCase("over-sampling-below-batch", _with("spec.rollout.overSamplingBatchSize", 16),
            "spec.rollout.overSamplingBatchSize", "overSamplingBatchSize must be >= spec.rollout.batchSize",
            "cel", "over-sampling-at-least-batch"),
    BadCase("colocate-with-rollout-gpus", _with("spec.placement.colocate", True),
            "spec.placement.rolloutNumGpus", "rolloutNumGpus must be unset with colocate: true",
            "cel", "colocate-excludes-rollout-gpus"),
    BadCase("disaggregated-without-rollout-gpus", _with("spec.placement.rolloutNumGpus", None, delete=True),
            "spec.placement.rolloutNumGpus", "rolloutNumGpus is required unless colocate: true",
            "cel", "disaggregated-needs-rollout-gpus"),
    BadCase("rollout-gpus-not-multiple-of-engine", _with("spec.placement.rolloutNumGpus", 3),
            "spec.sglang.gpusPerEngine", "must be a multiple of spec.sglang.gpusPerEngine",
            "cel", "rollout-gpus-divisible"),
    BadCase("model-parallel-does-not-divide", _with("spec.perf.contextParallelSize", 3),
            "spec.perf", "must divide the actor GPUs", "cel", "model-parallel-divides-actor"),
    BadCase("tp-larger-than-node", _chain(("spec.perf.tensorModelParallelSize", 8),
                                          ("spec.perf.contextParallelSize", 1),
                                          ("spec.placement.actorNumNodes", 2)),
            "spec.perf.tensorModelParallelSize", "must fit in one node", "cel", "tp-within-node"),
    BadCase("dynamic-batch-without-budget", _with("spec.perf.maxTokensPerGpu", None, delete=True),
            "spec.perf.maxTokensPerGpu", "useDynamicBatchSize needs spec.perf.maxTokensPerGpu",
            "cel", "dynamic-batch-needs-budget"),
    BadCase("sequence-parallel-without-tp", _chain(("spec.perf.tensorModelParallelSize", 1)),
            "spec.perf.sequenceParallel", "sequenceParallel needs tensorModelParallelSize > 1",
            "cel", "sequence-parallel-needs-tp"),
    BadCase("full-recompute-without-method", _with("spec.perf.recompute", {"granularity": "full"}),
            "spec.perf.recompute.method", "granularity full needs method", "cel", "full-needs-method"),
    BadCase("eval-interval-without-datasets", _with("spec.eval.datasets", []),
            "spec.eval.datasets", "interval needs at least one entry", "cel", "interval-needs-datasets"),
    BadCase("eval-duplicate-dataset-names",
            _with("spec.eval.datasets", [{"name": "aime", "path": "/a.jsonl"},
                                         {"name": "aime", "path": "/b.jsonl"}]),
            "spec.eval.datasets", "names must be unique", "cel", "unique-dataset-names"),
    BadCase("no-reward", _with("spec.rollout.rmType", None, delete=True),
            "spec.rollout.rmType", "needs a reward", "cel", "reward-source"),
    BadCase("remote-reward-without-url", _with("spec.rollout.rmType", "remote"),
            "spec.rollout.rmUrl", "rmUrl is required when rmType is remote", "cel", "remote-needs-url"),
    BadCase("no-run-length", _with("spec.rollout.numRollout", None, delete=True),
            "spec.rollout.numRollout", "needs a run length", "cel", "run-length"),
    BadCase("filter-without-over-sampling",
            _with("spec.rollout.dynamicSamplingFilterPath",
                  "kuberl.worker.rollout.filters:check_reward_nonzero_std"),
            "spec.rollout.dynamicSamplingFilterPath", "needs spec.rollout.overSamplingBatchSize",
            "cel", "filter-needs-over-sampling"),
    BadCase("mask-without-partial", _with("spec.rollout.maskOffpolicyInPartialRollout", True),
            "spec.rollout.maskOffpolicyInPartialRollout", "needs spec.rollout.partialRollout",
            "cel", "mask-needs-partial"),
    BadCase("steps-do-not-divide-batch", _with("spec.rollout.numStepsPerRollout", 3),
            "spec.rollout.numStepsPerRollout", "must divide batchSize x nSamplesPerPrompt",
            "cel", "steps-divide-batch"),
    BadCase("steps-and-global-batch", _with("spec.rollout.globalBatchSize", 256),
            "spec.rollout.globalBatchSize", "numStepsPerRollout or globalBatchSize, not both",
            "cel", "steps-or-global-batch"),
    BadCase("context-shorter-than-response", _with("spec.rollout.maxContextLen", 4096),
            "spec.rollout.maxContextLen", "must exceed maxResponseLen", "cel", "context-fits-response"),
    BadCase("clip-high-below-clip", _with("spec.algorithm.epsClipHigh", 0.1),
            "spec.algorithm.epsClipHigh", "epsClipHigh must be >= epsClip", "cel",
            "clip-high-at-least-clip"),
    BadCase("tis-low-above-high", _with("spec.algorithm.tisClipLow", 3.0),
            "spec.algorithm.tisClipLow", "tisClipLow must be below tisClip", "cel", "tis-bounds"),
    BadCase("min-lr-above-lr", _with("spec.optimizer.minLr", 1.0e-3),
            "spec.optimizer.minLr", "minLr must not exceed lr", "cel", "min-lr-below-lr"),
    BadCase("kl-loss-without-reference",
            _chain(("spec.algorithm.klLossCoef", 0.01), ("spec.checkpoint.refLoad", _DELETE)),
            "spec.checkpoint.refLoad", "needs spec.checkpoint.refLoad", "cel", "kl-loss-needs-reference"),
    BadCase("name-too-long", _with("metadata.name", "a" * 48),
            "metadata.name", "at most 47 characters", "cel", "name-length"),
    # --- schema: types, enums, bounds, patterns, unknown fields ---
    BadCase("unknown-field", _with("spec.rollout.nSamplePerPrompt", 8),
            "spec.rollout.nSamplePerPrompt", "unknown field", "schema"),
    BadCase("unknown-reward-type", _with("spec.rollout.rmType", "deepscalar"),
            "spec.rollout.rmType", "deepscaler", "schema"),
    BadCase("unknown-architecture", _with("spec.model.architecture", "glm4-10b"),
            "spec.model.architecture", "glm4-9b", "schema"),
    BadCase("zero-temperature", _with("spec.rollout.temperature", 0),
            "spec.rollout.temperature", "greater than 0", "schema"),
    BadCase("negative-batch", _with("spec.rollout.batchSize", 0),
            "spec.rollout.batchSize", "greater than or equal to 1", "schema"),
    BadCase("bad-import-path", _with("spec.rollout.customRmPath", "my pkg/rewards.py"),
            "spec.rollout.customRmPath", "should match", "schema"),
    BadCase("missing-prompt-data", _with("spec.rollout.promptData", None, delete=True),
            "spec.rollout.promptData", "required", "schema"),
    BadCase("top-p-above-one", _with("spec.eval.topP", 1.5),
            "spec.eval.topP", "less than or equal to 1", "schema"),
    BadCase("bad-gpu-type", _with("spec.cluster.gpuType", "H1000"),
            "spec.cluster.gpuType", "H100", "schema"),
    BadCase("bad-kl-type", _with("spec.algorithm.klLossType", "kl"),
            "spec.algorithm.klLossType", "low_var_kl", "schema"),
    # --- pydantic only: passthrough arguments checked against the pinned SGLang and smg ---
    BadCase("server-arg-typo", _with("spec.sglang.serverArgs", {"memFractonStatic": 0.8}),
            "spec.sglang.serverArgs.memFractonStatic", "did you mean memFractionStatic?", "pydantic"),
    BadCase("memory-fraction-above-one", _with("spec.sglang.serverArgs", {"memFractionStatic": 1.2}),
            "spec.sglang.serverArgs.memFractionStatic", "must be > 0 and <= 1", "pydantic"),
    BadCase("negative-port", _with("spec.sglang.serverArgs", {"ncclPort": -5}),
            "spec.sglang.serverArgs.ncclPort", "must be >= 1 and <= 65535", "pydantic"),
    BadCase("server-arg-owned-by-kuberl", _with("spec.sglang.serverArgs", {"tpSize": 2}),
            "spec.sglang.serverArgs.tpSize", "set by spec.sglang.gpusPerEngine", "pydantic"),
    BadCase("router-policy-not-a-choice", _with("spec.sglang.routerArgs", {"policy": "fastest"}),
            "spec.sglang.routerArgs.policy", "not one of cache_aware", "pydantic"),
]

# Every RLTrainingJob manifest under examples/ (examples/kueue holds the queue objects, not jobs).
JOB_EXAMPLES = sorted(p for p in EXAMPLES.rglob("*.yaml")
                      if "build" not in p.parts and "kind: RLTrainingJob" in p.read_text())
