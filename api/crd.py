"""Generate the RLTrainingJob CustomResourceDefinition from the pydantic models.

We convert ``model_json_schema()`` ourselves (modelled on kube-custom-resource) because that library does not
emit ``default:``, and the apiserver must apply defaults before CEL rules run. Run ``python -m kuberl.api.crd``
to rewrite ``crds/`` and the Helm chart's copy; a test fails when either drifts.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kuberl.api import job as j
from kuberl.api.base import SpecModel
from kuberl.api.spec import MUTABLE_ROLLOUT_FIELDS, TRANSITION_RULES, RLTrainingJobSpec
from kuberl.api.spec.rollout import RolloutSpec
from kuberl.api.status import RLTrainingJobStatus

CRD_FILENAME = f"{j.GROUP}_{j.PLURAL}.yaml"
REPO_ROOT = Path(__file__).resolve().parent.parent
CRD_PATHS = (REPO_ROOT / "crds" / CRD_FILENAME, REPO_ROOT / "charts" / "kuberl" / "crds" / CRD_FILENAME)

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout",
     "description": "Completed rollouts / planned"},
    {"name": "Reward", "type": "number", "jsonPath": ".status.progress.lastReward",
     "description": "Mean raw reward of the last rollout"},
    {"name": "Eval", "type": "number", "jsonPath": ".status.progress.lastEvalScore",
     "description": "Mean score of the last evaluation"},
    {"name": "Reason", "type": "string", "jsonPath": ".status.reason",
     "description": "Why the job is in its phase (e.g. WaitingForAdmission, Preempted in a queue)"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROP_KEYS = {"title", "$defs"}


class SchemaError(ValueError):
    """The models use a JSON Schema construct that a structural CRD schema cannot express."""


def _rules_by_title(*roots: type[BaseModel]) -> dict[str, list[dict[str, str]]]:
    """Map each SpecModel class name (the JSON schema title) to its CEL rules."""
    out: dict[str, list[dict[str, str]]] = {}
    seen: set[type] = set()

    def visit(cls: type[BaseModel]) -> None:
        if cls in seen:
            return
        seen.add(cls)
        if issubclass(cls, SpecModel) and cls.RULES:
            out[cls.__name__] = [r.to_crd() for r in cls.RULES]
        for field in cls.model_fields.values():
            for arg in _model_types(field.annotation):
                visit(arg)

    for root in roots:
        visit(root)
    return out


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    import typing

    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in typing.get_args(annotation):
        found += _model_types(arg)
    return found


def _convert(node: Any, defs: dict[str, Any], rules: dict[str, list[dict[str, str]]],
             nullable: bool) -> dict[str, Any]:
    """Return a structural OpenAPI v3.0 schema for one JSON-schema node."""
    if not isinstance(node, dict):
        raise SchemaError(f"unexpected schema node {node!r}")
    node = dict(node)
    extra: dict[str, Any] = {}
    if "$ref" in node:
        name = node.pop("$ref").split("/")[-1]
        target = copy.deepcopy(defs[name])
        extra = {k: v for k, v in node.items() if k in ("description", "default")}
        node = {**target, **extra}
    for bad in ("const", "prefixItems", "oneOf", "allOf", "not"):
        if bad in node:
            raise SchemaError(f"'{bad}' cannot be expressed in a structural CRD schema: {node}")
    title = node.get("title")
    if "anyOf" in node:
        branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
        if len(branches) != 1:
            raise SchemaError(f"only Optional[X] unions are supported, got {branches}")
        had_null_default = "default" in node and node["default"] is None
        merged = {**node, **_convert(branches[0], defs, rules, nullable)}
        for key in ("description", "default"):
            if key in node:
                merged[key] = node[key]
        if had_null_default:
            merged.pop("default", None)
        if nullable:
            merged["nullable"] = True
        node = merged
        title = None
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out["properties"] = {k: _convert(v, defs, rules, nullable) for k, v in value.items()}
        elif key == "items":
            out["items"] = _convert(value, defs, rules, nullable)
        elif key == "additionalProperties":
            if value is False:
                continue  # structural schemas prune or reject unknown fields (kubectl: strict)
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out["additionalProperties"] = _convert(value, defs, rules, nullable)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            out[bound] = value
            out[key] = True
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    if title in rules:
        out["x-kubernetes-validations"] = rules[title]
    return out


def _default_groups(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """Give optional groups a default, so the apiserver fills their nested fields.

    The default is the group's fully defaulted wire form, not ``{}``: the apiserver validates a default
    against the schema and CEL rules without applying nested defaults first. A group whose defaults alone
    are invalid (e.g. placement needs rolloutNumGpus) gets none, and an Optional group stays absent.
    """
    required = set(schema.get("required", []))
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for name, prop in schema.get("properties", {}).items():
        field = fields.get(name)
        group = _model_types(field.annotation) if field is not None else []
        if prop.get("type") != "object" or "properties" not in prop or not group:
            continue
        if name not in required and "default" not in prop and field.default is not None:
            try:
                value = group[0]()
            except ValidationError:
                value = None
            if value is not None:
                prop["default"] = value.model_dump(mode="json", by_alias=True, exclude_none=True)
        _default_groups(prop, group[0])


def _enum_values(schema: dict[str, Any]) -> None:
    """Enum members need the string type at the node itself, not in a referenced definition."""
    if "enum" in schema and "type" not in schema:
        schema["type"] = "string"
    for child in schema.get("properties", {}).values():
        _enum_values(child)
    if isinstance(schema.get("items"), dict):
        _enum_values(schema["items"])


def openapi_schema(model: type[BaseModel], nullable: bool = False) -> dict[str, Any]:
    """Return the structural schema of one root model (spec or status)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema = _convert(raw, raw.get("$defs", {}), _rules_by_title(model), nullable)
    _enum_values(schema)
    return schema


def _transition_rules(spec: dict[str, Any]) -> None:
    """Attach ``oldSelf`` rules: most groups are immutable; only suspend and numRollout may change."""
    for rule in TRANSITION_RULES:
        group = rule.id.removeprefix("immutable-")
        spec["properties"][group].setdefault("x-kubernetes-validations", []).append(rule.to_crd())
    mutable = {RolloutSpec.model_fields[f].alias for f in MUTABLE_ROLLOUT_FIELDS}
    for name, prop in spec["properties"]["rollout"]["properties"].items():
        if name in mutable:
            continue
        prop.setdefault("x-kubernetes-validations", []).append({
            "rule": "self == oldSelf",
            "message": (
                f"spec.rollout.{name} cannot change while the job exists: delete and recreate the "
                "RLTrainingJob (only spec.suspend and spec.rollout.numRollout may change)"
            ),
        })


def build_crd() -> dict[str, Any]:
    """Return the CustomResourceDefinition manifest for RLTrainingJob."""
    spec = openapi_schema(RLTrainingJobSpec)
    spec["description"] = RLTrainingJobSpec.__doc__.strip()
    _default_groups(spec, RLTrainingJobSpec)
    _transition_rules(spec)
    status = openapi_schema(RLTrainingJobStatus, nullable=True)
    status["x-kubernetes-preserve-unknown-fields"] = True  # kopf's bookkeeping lives in status.kopf
    root = {
        "type": "object",
        "description": j.RLTrainingJob.__doc__.strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
        "x-kubernetes-validations": [
            {
                "rule": f"size(self.metadata.name) <= {j.MAX_NAME_LENGTH}",
                "message": (
                    f"metadata.name must be at most {j.MAX_NAME_LENGTH} characters (KubeRay derives its "
                    "Ray cluster name from it): shorten it"
                ),
            }
        ],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{j.PLURAL}.{j.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "kuberl"},
        },
        "spec": {
            "group": j.GROUP,
            "names": {
                "kind": j.KIND,
                "listKind": f"{j.KIND}List",
                "plural": j.PLURAL,
                "singular": j.SINGULAR,
                "shortNames": list(j.SHORT_NAMES),
                "categories": ["kuberl", "all"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": j.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def render_crd_yaml() -> str:
    """Return the CRD as the YAML text committed under crds/."""
    header = "# Generated by `python -m kuberl.api.crd` from kuberl.api; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def write_crds() -> list[Path]:
    """Rewrite crds/ and the chart's copy; return the paths written."""
    text = render_crd_yaml()
    for path in CRD_PATHS:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return list(CRD_PATHS)


if __name__ == "__main__":
    for written in write_crds():
        print(written, file=sys.stderr)
