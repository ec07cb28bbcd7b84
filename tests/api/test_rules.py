"""Each cross-field rule's CEL form agrees with its Python form (cel-python, offline).

The real apiserver evaluates the same CEL in tests/cluster; here we check agreement on every bad case and on
every example, after applying the CRD's defaults the way the apiserver does.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import celpy
import pytest
import yaml

from kuberl.api.base import SpecModel
from kuberl.api.crd import build_crd
from kuberl.api.spec import RLTrainingJobSpec
from kuberl.api.spec.rollout import IMPORT_PATH_PATTERN
from tests.api.cases import BAD_CASES, JOB_EXAMPLES, valid_manifest


def _all_rules() -> dict[str, tuple[str, Any]]:
    """rule id -> (wire path of the declaring object, Rule)."""
    out: dict[str, tuple[str, Any]] = {}

    def visit(cls: type[SpecModel], path: str) -> None:
        for rule in cls.RULES:
            out[rule.id] = (path, rule)
        for field in cls.model_fields.values():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, SpecModel):
                visit(ann, f"{path}.{field.alias}")

    visit(RLTrainingJobSpec, "spec")
    return out


RULES = _all_rules()
SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Fill ``default``s as the apiserver does before validation (objects only, recursively)."""
    if isinstance(value, dict) and "properties" in schema:
        value = dict(value)
        for name, prop in schema["properties"].items():
            if name not in value and "default" in prop:
                value[name] = copy.deepcopy(prop["default"])
            if name in value:
                value[name] = _apply_defaults(value[name], prop)
    elif isinstance(value, list) and "items" in schema:
        value = [_apply_defaults(v, schema["items"]) for v in value]
    return value


def _node(manifest: dict[str, Any], path: str) -> Any:
    node: Any = manifest
    for key in path.split("."):
        node = node[key]
    return node


def _cel(expr: str, node: Any) -> bool:
    env = celpy.Environment()
    program = env.program(env.compile(expr))
    return bool(program.evaluate({"self": celpy.json_to_cel(node)}))


def test_every_rule_has_a_bad_case() -> None:
    covered = {c.rule_id for c in BAD_CASES if c.rule_id}
    assert set(RULES) <= covered, f"rules without a bad manifest: {set(RULES) - covered}"


@pytest.mark.parametrize("case", [c for c in BAD_CASES if c.rule_id in RULES], ids=lambda c: c.id)
def test_cel_rejects_what_python_rejects(case) -> None:
    path, rule = RULES[case.rule_id]
    manifest = _apply_defaults(case.manifest, SCHEMA)
    assert _cel(rule.cel, _node(manifest, path)) is False


@pytest.mark.parametrize(
    "example", JOB_EXAMPLES, ids=str
)
def test_cel_accepts_every_example(example) -> None:
    manifest = _apply_defaults(yaml.safe_load(example.read_text()), SCHEMA)
    for rule_id, (path, rule) in RULES.items():
        assert _cel(rule.cel, _node(manifest, path)), rule_id


def test_name_length_rule_is_in_the_crd_root() -> None:
    rules = [r["rule"] for r in SCHEMA["x-kubernetes-validations"]]
    assert _cel(rules[0], {"metadata": {"name": "a" * 47}})
    assert not _cel(rules[0], {"metadata": {"name": "a" * 48}})


@pytest.mark.parametrize(
    ("path", "ok"),
    [("my_pkg.rewards:score", True), ("slime.rollout.filter.check", True), ("score", False),
     ("my-pkg.rewards:score", False), ("pkg.mod:", False), ("a b:c", False)],
)
def test_import_path_pattern(path: str, ok: bool) -> None:
    assert bool(re.match(IMPORT_PATH_PATTERN, path)) is ok


def test_defaults_make_valid_manifest_complete() -> None:
    manifest = _apply_defaults(valid_manifest(), SCHEMA)
    assert manifest["spec"]["sglang"]["serverConcurrency"] == 512
    assert manifest["spec"]["backends"] == {"trainer": "auto", "rollout": "auto", "device": "auto"}
