"""kuberl.api validation: every example is valid; every bad manifest names its field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from kuberl.api import load_jobs, parse_job
from kuberl.cli.main import main
from kuberl.errors import SpecError
from tests.api.cases import BAD_CASES, JOB_EXAMPLES, BadCase, valid_manifest

EXAMPLE_FILES = JOB_EXAMPLES


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    assert load_jobs(path)


def test_examples_cover_reference_colocated_and_dapo() -> None:
    names = {p.stem for p in EXAMPLE_FILES}
    assert {"glm4-9b-dapo-math", "glm4-9b-dapo-math-colocated", "glm4-9b-dapo-dynamic-sampling"} <= names


@pytest.mark.parametrize("case", BAD_CASES, ids=lambda c: c.id)
def test_bad_manifest_is_rejected_naming_field(case: BadCase) -> None:
    with pytest.raises(SpecError) as info:
        parse_job(case.manifest)
    problems = info.value.problems
    matching = [p for p in problems if p.startswith(case.field + ":")]
    assert matching, f"no problem names {case.field}: {problems}"
    assert any(case.message.lower() in p.lower() for p in matching), problems


def test_valid_manifest_round_trips_with_defaults() -> None:
    job = parse_job(valid_manifest())
    wire = job.to_manifest()
    assert wire["spec"]["rollout"]["topP"] == 1.0  # slime default filled in
    assert wire["spec"]["algorithm"]["epsClipHigh"] == 0.28
    assert parse_job(wire) == job


def test_several_problems_are_all_reported() -> None:
    manifest = valid_manifest()
    manifest["spec"]["rollout"]["overSamplingBatchSize"] = 8
    manifest["spec"]["perf"]["maxTokensPerGpu"] = None
    del manifest["spec"]["perf"]["maxTokensPerGpu"]
    manifest["spec"]["rollout"]["temperature"] = -1
    with pytest.raises(SpecError) as info:
        parse_job(manifest)
    fields = {p.split(":")[0] for p in info.value.problems}
    assert {"spec.rollout.temperature", "spec.perf.maxTokensPerGpu"} <= fields


def test_validate_cli_prints_one_line_per_problem_and_fails(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    import yaml

    bad.write_text(yaml.safe_dump(BAD_CASES[0].manifest))
    good = EXAMPLE_FILES[0]
    assert main(["validate", str(good), str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{bad}: {BAD_CASES[0].field}:")


def test_validate_cli_reports_unreadable_and_non_yaml_files(tmp_path: Path, capsys) -> None:
    junk = tmp_path / "junk.yaml"
    junk.write_text("spec: [unclosed")
    assert main(["validate", str(junk), str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err
    assert "not valid YAML" in err and "cannot read the file" in err


def test_wrong_kind_and_version_are_named() -> None:
    manifest = valid_manifest()
    manifest["apiVersion"] = "kuberl.io/v1"
    with pytest.raises(SpecError) as info:
        parse_job(manifest)
    assert info.value.problems[0].startswith("apiVersion:")
