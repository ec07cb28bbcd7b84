"""Admission: valid specs that cannot run in a cluster are refused with the field and the fix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kuberl.api import admission as adm
from kuberl.api import parse_job
from kuberl.api.admission import (
    ADMISSION_RULES,
    Implementation,
    Severity,
    admission_errors,
    admission_problems,
)
from kuberl.cli.main import main
from tests.api.cases import _DELETE, EXAMPLES, _chain, _with, valid_manifest

COLOCATED = EXAMPLES / "glm4-9b-dapo-math-colocated.yaml"
TINY = EXAMPLES / "tiny" / "job.yaml"


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _problems(manifest: dict[str, Any], **kw: Any) -> dict[str, tuple[Severity, str, str]]:
    return {p.rule_id: (p.severity, p.field, p.message)
            for p in admission_problems(parse_job(manifest), **kw)}


def test_cluster_examples_are_admitted_without_warnings() -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert admission_problems(parse_job(_load(path))) == [], path.name


def test_local_examples_are_admitted_with_a_storage_warning_only() -> None:
    problems = admission_problems(parse_job(_load(TINY)))
    assert [(p.rule_id, p.severity) for p in problems] == [
        ("checkpoints-on-shared-storage", Severity.WARNING)]


# (case id, manifest, rule id, field, substring of the message)
ERROR_CASES = [
    ("torch-with-tensor-parallel",
     _chain(("spec.backends.trainer", "torch"), ("spec.perf.tensorModelParallelSize", 2)),
     "torch-data-parallel-only", "spec.perf", "tensorModelParallelSize=2"),
    ("torch-with-expert-parallel",
     _chain(("spec.backends.trainer", "torch"), ("spec.perf.expertModelParallelSize", 2)),
     "torch-data-parallel-only", "spec.perf", "expertModelParallelSize=2"),
    ("sglang-on-cpu", _with("spec.backends.device", "cpu"),
     "engine-needs-cuda", "spec.backends.device", "CUDA GPUs only"),
    ("embedded-engine-on-two-gpus", _with("spec.backends.rollout", "embedded"),
     "embedded-engine-one-device", "spec.sglang.gpusPerEngine", "gpusPerEngine is 2"),
    ("embedded-engine-colocated-on-gpus",
     _chain(("spec.backends.rollout", "embedded"), ("spec.sglang.gpusPerEngine", 1),
            ("spec.placement.colocate", True), ("spec.placement.rolloutNumGpus", _DELETE)),
     "colocated-engine-releases-memory", "spec.placement.colocate", "cannot"),
    ("engine-wider-than-a-node",
     _chain(("spec.sglang.gpusPerEngine", 16), ("spec.placement.rolloutNumGpus", 16)),
     "engine-within-node", "spec.sglang.gpusPerEngine", "span nodes of 8 GPUs"),
]


@pytest.mark.parametrize(("manifest", "rule", "field", "text"),
                         [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_combination_that_cannot_run_is_refused(manifest: dict, rule: str, field: str,
                                                text: str) -> None:
    severity, where, message = _problems(manifest)[rule]
    assert severity is Severity.ERROR and where == field and text in message
    assert any(line.startswith(f"{field}: ") for line in admission_errors(parse_job(manifest)))


def test_every_error_rule_has_a_case() -> None:
    errors = {r.id for r in ADMISSION_RULES if r.severity is Severity.ERROR}
    covered = {c[2] for c in ERROR_CASES} | {"trainer-backend-built", "rollout-engine-built"}
    assert errors == covered


def test_colocated_engine_must_fit_a_trainer_pod() -> None:
    manifest = _load(COLOCATED)
    manifest["spec"]["placement"].update(actorNumNodes=2, actorNumGpusPerNode=6)
    manifest["spec"]["sglang"]["gpusPerEngine"] = 4  # 12 GPUs hold 3 engines, but 6 per pod do not
    manifest["spec"]["perf"]["tensorModelParallelSize"] = 2
    severity, field, message = _problems(manifest)["engine-within-node"]
    assert (severity, field) == (Severity.ERROR, "spec.sglang.gpusPerEngine")
    assert "must divide placement.actorNumGpusPerNode (6)" in message


def test_gpus_per_node_comes_from_the_operator_setting() -> None:
    manifest = _chain(("spec.sglang.gpusPerEngine", 16), ("spec.placement.rolloutNumGpus", 16))
    assert "engine-within-node" not in _problems(manifest, gpus_per_node=16)


def test_an_unbuilt_backend_is_refused_naming_the_auto_default(monkeypatch) -> None:
    monkeypatch.setitem(adm.TRAINER_BACKENDS, "megatron", Implementation(built=False))
    severity, field, message = _problems(valid_manifest())["trainer-backend-built"]
    assert severity is Severity.ERROR and field == "spec.backends.trainer"
    assert "megatron trainer backend is not built" in message and "'auto' means megatron" in message
    assert message.endswith("set it to one of torch")
    # an explicit torch trainer is admitted
    assert "trainer-backend-built" not in _problems(_with("spec.backends.trainer", "torch"))
    monkeypatch.setitem(adm.ROLLOUT_ENGINES, "sglang", Implementation(built=False))
    assert "'auto' means sglang" in _problems(valid_manifest())["rollout-engine-built"][2]


def test_both_trainer_backends_are_built_this_release() -> None:
    assert adm.built_trainer_backends() == ("torch", "megatron")
    assert set(adm.built_rollout_engines()) == {"sglang", "embedded"}


@pytest.mark.parametrize(("edits", "rule", "text"), [
    ((("spec.backends.trainer", "torch"), ("spec.perf.tensorModelParallelSize", 1),
      ("spec.perf.contextParallelSize", 1), ("spec.perf.sequenceParallel", False),
      ("spec.perf.recompute", {"granularity": "selective"})),
     "torch-ignores-megatron-settings", "recompute"),
    ((("spec.checkpoint.save", "/scratch/ckpt"),), "checkpoints-on-shared-storage",
     "not under spec.cluster.storage.mountPath (/data)"),
    ((("spec.sglang.serverArgs", {"cudaGraphMaxBs": 64}),), "deprecated-passthrough-args",
     "serverArgs.cudaGraphMaxBs"),
    ((("spec.placement.offloadTrain", True),), "trainer-offload-not-implemented",
     "not implemented yet"),
])
def test_warnings_name_what_goes_wrong_later(edits: tuple, rule: str, text: str) -> None:
    severity, _field, message = _problems(_chain(*edits))[rule]
    assert severity is Severity.WARNING and text in message
    assert admission_errors(parse_job(_chain(*edits))) == []


def test_validate_prints_admission_errors_and_warnings(tmp_path: Path, capsys) -> None:
    refused = tmp_path / "refused.yaml"
    refused.write_text(yaml.safe_dump(_with("spec.backends.device", "cpu")))
    warned = tmp_path / "warned.yaml"
    warned.write_text(yaml.safe_dump(_with("spec.checkpoint.save", "/scratch/ckpt")))
    assert main(["validate", str(warned)]) == 0
    out = capsys.readouterr()
    assert "warned.yaml: glm4-9b-dapo-math: valid" in out.out
    assert "warning: spec.checkpoint.save:" in out.err
    assert main(["validate", str(refused), str(warned)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"{refused}: glm4-9b-dapo-math: spec.backends.device: ") for line in err)
    wide = tmp_path / "wide.yaml"
    wide.write_text(yaml.safe_dump(_chain(("spec.sglang.gpusPerEngine", 16),
                                          ("spec.placement.rolloutNumGpus", 16))))
    assert main(["validate", str(wide)]) == 1
    assert main(["validate", "--gpus-per-node", "16", str(wide)]) == 0
