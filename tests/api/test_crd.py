"""The committed CRD is exactly what the models generate, and is a structural schema."""

from __future__ import annotations

from typing import Any

from kuberl.api.crd import CRD_PATHS, build_crd, render_crd_yaml


def test_committed_crds_match_generated() -> None:
    expected = render_crd_yaml()
    for path in CRD_PATHS:
        assert path.exists(), f"{path} missing: run `kuberl crd --write`"
        assert path.read_text() == expected, f"{path} drifted: run `kuberl crd --write`"


def _walk(schema: dict[str, Any], path: str = ""):
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _walk(prop, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "$ref" not in node and "anyOf" not in node and "allOf" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        assert not ("properties" in node and "additionalProperties" in node), path


def test_spec_is_not_preserve_unknown_fields() -> None:
    root = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    assert not spec.get("x-kubernetes-preserve-unknown-fields")
    for group in ("rollout", "perf", "algorithm", "placement"):
        assert not spec["properties"][group].get("x-kubernetes-preserve-unknown-fields"), group
    assert root["properties"]["status"]["x-kubernetes-preserve-unknown-fields"] is True


def test_names_printer_columns_and_status_subresource() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "rltrainingjobs.kuberl.io"
    assert crd["spec"]["names"]["shortNames"] == ["rltj"]
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Phase", "Rollout", "Reward", "Eval", "Reason", "Age"]


def test_transition_rules_guard_immutable_groups_but_not_num_rollout() -> None:
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert any(r["rule"] == "self == oldSelf" for r in spec["properties"]["perf"]["x-kubernetes-validations"])
    rollout = spec["properties"]["rollout"]["properties"]
    assert "x-kubernetes-validations" not in rollout["numRollout"]
    assert any(r["rule"] == "self == oldSelf" for r in rollout["batchSize"]["x-kubernetes-validations"])
    assert "x-kubernetes-validations" not in spec["properties"]["suspend"]


def test_api_reference_doc_matches_models() -> None:
    from kuberl.api.reference import REFERENCE_PATH, render_reference

    assert REFERENCE_PATH.read_text() == render_reference(), (
        "docs/api-reference.md drifted: run `python -m kuberl.api.reference`"
    )
