"""No silent knob: every leaf field of the RLTrainingJob spec is read by something that acts on it.

For each leaf, the reference manifest is changed to another valid value and resolved; the WorkerConfig
attributes (and keys of its dict attributes) that change are where resolve() put the field. Then an AST
scan of worker/ and operator/ must find a read of one of them: an attribute read (``config.num_rollout``)
for an attribute, a string key (``algorithm["eps_clip"]``) or attribute for a dict key. Fields that
resolve() does not carry must be read by the operator from the spec (``OPERATOR_FIELDS``, each checked by
the same scan) or explicitly allowed below with the reason.

The scan is deliberately name-based (the config travels under many names), so it proves that a name is
read somewhere, not that every code path honours it; it catches the common failure, a field that
nothing reads at all.
"""

from __future__ import annotations

import ast
import copy
import enum
import types
import typing
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from pydantic.fields import FieldInfo

from kuberl.api import parse_job
from kuberl.api.base import SpecModel
from kuberl.api.resolve import resolve
from kuberl.api.spec import RLTrainingJobSpec
from kuberl.errors import SpecError
from tests.api.cases import valid_manifest

ROOT = Path(__file__).resolve().parents[2]
CONSUMER_DIRS = ("worker", "operator")

# Read by the operator straight from the spec (it renders the RayJob from them); the scan below checks
# that operator/ reads each one's attribute.
OPERATOR_FIELDS = {
    "cluster.gpuType", "cluster.image", "cluster.storage.claimName", "cluster.storage.mountPath",
    "cluster.queueName", "cluster.priorityClassName", "cluster.nodeSelector", "cluster.tolerations",
    "cluster.env", "cluster.cpusPerGpu", "cluster.memoryPerGpuGi", "cluster.shmSizeGi",
    "cluster.backoffLimit", "cluster.activeDeadlineSeconds", "cluster.ttlSecondsAfterFinished",
    "suspend",
    "placement.actorNumNodes", "placement.actorNumGpusPerNode", "placement.rolloutNumGpus",
    "placement.colocate", "sglang.gpusPerEngine",
}

# Fields being wired on other branches this session (issue 13). TEMPORARY: the coordinator removes each
# entry when the branch that wires it is merged; the test then proves the wiring, and
# test_temporary_list_only_names_real_silent_fields fails for an entry that is already read.
# Fields no worker code reads yet. Each is announced to the user instead of being dropped silently:
# admission (api/admission.py) warns with the rule named here, so `kuberl validate` and the operator's
# SpecWarning event say it does nothing. Reading one of them removes it from this list (the test below).
KNOWN_UNWIRED = {
    "placement.offloadTrain": "admission rule trainer-offload-not-implemented warns",
}

Edit = Callable[[dict[str, Any]], None]


def _edits(**paths: Any) -> Edit:
    """An edit of several fields at once (``a__b=v`` sets spec.a.b; ``DELETE`` removes it)."""
    def apply(manifest: dict[str, Any]) -> None:
        for dotted, value in paths.items():
            _set(manifest, dotted.replace("__", "."), value)
    return apply


DELETE = object()

# Values that make a leaf differ validly when the generic candidates cannot (cross-field rules): a
# plain value, or an Edit that also changes the fields the rules tie it to.
OVERRIDES: dict[str, list[Any]] = {
    "model.hfCheckpoint": ["/models/other"],
    "model.architecture": ["auto"],
    "model.overrides.untieEmbeddingsAndOutputWeights": [False, True],
    "rollout.promptData": ["/data/other.jsonl"],
    "rollout.rmUrl": ["http://rm.example:8000/score"],
    "rollout.customRmPath": ["my_pkg.rewards:score"],
    "rollout.dynamicSamplingFilterPath": [_edits(rollout__dynamicSamplingFilterPath="my_pkg.f:keep",
                                                 rollout__overSamplingBatchSize=64)],
    "rollout.maskOffpolicyInPartialRollout": [_edits(rollout__maskOffpolicyInPartialRollout=True,
                                                     rollout__partialRollout=True)],
    "perf.tensorModelParallelSize": [_edits(perf__tensorModelParallelSize=1,
                                            perf__sequenceParallel=False)],
    "perf.pipelineModelParallelSize": [_edits(perf__pipelineModelParallelSize=2,
                                              perf__contextParallelSize=1)],
    "algorithm.epsClipC": [3.0],
    "optimizer.minLr": [1e-7],
    "rollout.bufferFilterPath": ["my_pkg.buffer:pick"],
    "rollout.customGenerateFunctionPath": ["my_pkg.gen:generate"],
    "rollout.globalBatchSize": [_edits(rollout__globalBatchSize=64, rollout__numStepsPerRollout=DELETE)],
    "rollout.maxContextLen": [100_000],
    "rollout.overSamplingBatchSize": [64, 128],
    "sglang.serverArgs": [{"memFractionStatic": 0.5}],
    "sglang.routerArgs": [{"policy": "round_robin"}],
    "cluster.nodeSelector": [{"pool": "gpu"}],
    "cluster.tolerations": [[{"key": "dedicated", "operator": "Exists"}]],
    "cluster.env": [[{"name": "NCCL_IB_HCA", "value": "mlx5"}]],
    "cluster.storage.claimName": ["other-claim"],
    "cluster.storage.mountPath": ["/mnt/shared"],
    "cluster.image": ["registry.example/worker:2"],
    "cluster.queueName": ["team-a"],
    "cluster.priorityClassName": ["high"],
    "backends.device": ["cpu", "cuda"],
    "eval.datasets[].path": ["/data/other-eval.jsonl"],
    "eval.datasets[].name": ["other"],
    "checkpoint.save": ["/data/other-ckpt"],
    "checkpoint.load": ["/data/other-load"],
    "checkpoint.refLoad": ["/data/other-ref"],
}


def _args(annotation: Any) -> list[Any]:
    """The alternatives of ``X | None`` (just ``[X]`` for any other annotation)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _spec_model(annotation: Any) -> type[SpecModel] | None:
    for arg in _args(annotation):
        if isinstance(arg, type) and issubclass(arg, SpecModel):
            return arg
    return None


def _list_item_model(annotation: Any) -> type[SpecModel] | None:
    for arg in _args(annotation):
        if typing.get_origin(arg) is list:
            item = typing.get_args(arg)[0]
            if isinstance(item, type) and issubclass(item, SpecModel) and len(item.model_fields) > 2:
                return item
    return None


def spec_leaves(model: type[SpecModel] = RLTrainingJobSpec, prefix: str = ""
                ) -> Iterator[tuple[str, str, FieldInfo]]:
    """(wire path, python name, field) of every leaf; list-of-model fields as ``name[].leaf``."""
    for name, info in model.model_fields.items():
        path = prefix + (info.alias or name)
        if (sub := _spec_model(info.annotation)) is not None:
            yield from spec_leaves(sub, path + ".")
        elif (item := _list_item_model(info.annotation)) is not None:
            yield from spec_leaves(item, path + "[].")
        else:
            yield path, name, info


def _set(manifest: dict[str, Any], path: str, value: Any) -> None:
    node: Any = manifest["spec"]
    *parents, last = path.split(".")
    for key in parents:
        node = node[key[:-2]][0] if key.endswith("[]") else node.setdefault(key, {})
    if value is DELETE:
        node.pop(last, None)
    else:
        node[last] = value


def _get(manifest: dict[str, Any], path: str) -> Any:
    node: Any = manifest["spec"]
    for key in path.split("."):
        if node is None:
            return None
        node = node[key[:-2]][0] if key.endswith("[]") else node.get(key)
    return node


def _candidates(path: str, info: FieldInfo, current: Any) -> list[Any]:
    if path in OVERRIDES:
        return OVERRIDES[path]
    out: list[Any] = []
    for arg in _args(info.annotation):
        if arg is bool:
            out.append(not current if current is not None else True)
        elif isinstance(arg, type) and issubclass(arg, enum.Enum):
            out += [m.value for m in arg if m.value != current]
        elif arg is int:
            base = current if isinstance(current, int) else None
            out += [v for v in ([base * 2, base + 1, base - 1] if base else []) + [1, 2, 4, 8, 64]
                    if v != current]
        elif arg is float:
            base = current if isinstance(current, float | int) else None
            out += [v for v in ([base * 0.5, base + 0.1] if base else []) + [0.5, 0.1, 1e-5, 1e-8]
                    if v != current]
        elif arg is str:
            out += [f"{current}x" if current else "x", "/data/x"]
        elif typing.get_origin(arg) is list:
            item = typing.get_args(arg)[0]
            out.append([1] if item is int else ["</answer>"])
    return out


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """WorkerConfig.to_dict() -> {"attr": v, "attr.key": v, "attr[].key": [v...]}."""
    flat: dict[str, Any] = {}
    for attr, value in config.items():
        flat[attr] = value
        if isinstance(value, dict):
            for key, sub in value.items():
                flat[f"{attr}.{key}"] = sub
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for key in value[0]:
                flat[f"{attr}[].{key}"] = [v.get(key) for v in value]
    return flat


def resolved_targets(path: str, info: FieldInfo) -> tuple[list[str], list[Any]]:
    """The WorkerConfig paths a different value of ``path`` changes (first valid candidate that changes
    anything), and the candidates tried."""
    base = valid_manifest()
    before = _flatten(resolve(parse_job(base)).to_dict())
    current = _get(base, path)
    tried = _candidates(path, info, info.default if current is None else current)
    for value in tried:
        manifest = copy.deepcopy(base)
        if callable(value):
            value(manifest)
        else:
            _set(manifest, path, value)
        try:
            job = parse_job(manifest)
        except SpecError:
            continue
        after = _flatten(resolve(job).to_dict())
        changed = sorted(k for k in after if after[k] != before.get(k))
        if changed:
            return changed, tried
    return [], tried


@cache
def consumer_reads(folders: tuple[str, ...] = CONSUMER_DIRS) -> tuple[frozenset[str], frozenset[str]]:
    """(attribute names read, string constants) in every module under ``folders``."""
    attrs: set[str] = set()
    strings: set[str] = set()
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                    attrs.add(node.attr)
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    strings.add(node.value)
    return frozenset(attrs), frozenset(strings)


def _is_read(target: str) -> bool:
    attrs, strings = consumer_reads()
    if "." in target:
        top, key = target.split(".", 1)
        top = top.removesuffix("[]")
        return top in attrs and (key in attrs or key in strings)
    return target in attrs


LEAVES = list(spec_leaves())


def test_the_walk_sees_every_group() -> None:
    groups = {path.split(".")[0] for path, _, _ in LEAVES}
    assert groups == set(RLTrainingJobSpec.model_fields)
    assert {"rollout.temperature", "eval.datasets[].labelKey", "cluster.storage.claimName",
            "perf.recompute.granularity", "suspend"} <= {p for p, _, _ in LEAVES}
    assert len(LEAVES) > 100


def _leaf_params() -> list[Any]:
    """Every leaf; a KNOWN_UNWIRED one is a strict xfail, so wiring it fails until the entry goes."""
    return [pytest.param(path, name, info, id=path, marks=pytest.mark.xfail(
        strict=True, reason=f"not read yet: {KNOWN_UNWIRED[path]}") if path in KNOWN_UNWIRED else ())
        for path, name, info in LEAVES]


@pytest.mark.parametrize(("path", "name", "info"), _leaf_params())
def test_every_spec_field_has_a_consumer(path: str, name: str, info: FieldInfo) -> None:
    attrs, _ = consumer_reads(("operator",))
    if path in OPERATOR_FIELDS:
        assert name in attrs, f"spec.{path} is listed as operator-only but operator/ never reads .{name}"
        return
    targets, tried = resolved_targets(path, info)
    assert targets, (
        f"spec.{path}: no valid different value (tried {tried}) changes the resolved WorkerConfig: "
        "carry it in resolve(), list it in OPERATOR_FIELDS, or add a value to OVERRIDES")
    read = [t for t in targets if _is_read(t)]
    assert read, (f"spec.{path} lands in WorkerConfig {targets}, but nothing under worker/ or "
                  "operator/ reads it: wire it, or remove the field")


def test_the_scan_detects_an_unread_attribute() -> None:
    attrs, strings = consumer_reads()
    assert "num_rollout" in attrs and "eps_clip" in strings  # known consumers are seen
    assert not _is_read("no_such_knob_anywhere") and not _is_read("algorithm.no_such_key")


def test_temporary_list_only_names_real_silent_fields() -> None:
    """An entry whose field is already read must leave KNOWN_UNWIRED."""
    by_path = {p: (n, i) for p, n, i in LEAVES}
    still_silent = []
    for path in KNOWN_UNWIRED:
        assert path in by_path, f"{path} is not a spec field"
        targets, _ = resolved_targets(path, by_path[path][1])
        if not any(_is_read(t) for t in targets):
            still_silent.append(path)
    assert sorted(still_silent) == sorted(KNOWN_UNWIRED), (
        "now read, remove from KNOWN_UNWIRED: "
        f"{sorted(set(KNOWN_UNWIRED) - set(still_silent))}")
