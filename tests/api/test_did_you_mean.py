"""Validation messages a newcomer can act on: full spec. paths and a did-you-mean for typos."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from kuberl.api import parse_job
from kuberl.errors import SpecError

TINY = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples/tiny/job.yaml").read_text())


def _problems(edit) -> list[str]:
    manifest = copy.deepcopy(TINY)
    edit(manifest)
    with pytest.raises(SpecError) as err:
        parse_job(manifest)
    return err.value.problems


def test_a_misspelt_field_gets_the_closest_known_name() -> None:
    problems = _problems(lambda m: m["spec"]["rollout"].update(nSamplesPerPromt=4))
    assert problems == ["spec.rollout.nSamplesPerPromt: unknown field; did you mean 'nSamplesPerPrompt'?"]


def test_a_misspelt_section_and_a_field_in_a_list_item_get_suggestions() -> None:
    assert _problems(lambda m: m["spec"].update(checkpont={})) == [
        "spec.checkpont: unknown field; did you mean 'checkpoint'?"]
    problems = _problems(lambda m: m["spec"]["eval"]["datasets"][0].update(pth="x"))
    assert problems == ["spec.eval.datasets.0.pth: unknown field; did you mean 'path'?"]


def test_nothing_close_says_how_to_fix_it() -> None:
    problems = _problems(lambda m: m["spec"]["rollout"].update(zzzzqqq=1))
    assert problems == ["spec.rollout.zzzzqqq: unknown field; remove it or check its spelling "
                        "(fields are camelCase)"]


def test_every_problem_line_starts_with_a_full_spec_path() -> None:
    def edit(m):
        del m["spec"]["placement"]["rolloutNumGpus"]
        m["spec"]["rollout"]["batchSize"] = 0

    for line in _problems(edit):
        assert line.startswith(("spec.", "metadata.")), line
