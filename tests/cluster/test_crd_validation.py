"""The generated RLTrainingJob CRD, served by the real apiserver, accepts the reference manifest and
rejects each schema and CEL case with the rule's own message (the cases are shared with the
pydantic tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kuberl.devcluster import Cluster
from tests.api.cases import BAD_CASES, BadCase, valid_manifest

pytestmark = pytest.mark.cluster

CRD = Path(__file__).resolve().parents[2] / "crds" / "kuberl.io_rltrainingjobs.yaml"
SERVER_CASES = [c for c in BAD_CASES if c.layer in ("cel", "schema")]


def dry_run_create(cluster: Cluster, manifest: dict) -> tuple[int, str]:
    proc = cluster.kubectl("create", "--dry-run=server", "-n", "default", "-f", "-",
                           input=yaml.safe_dump(manifest), check=False)
    return proc.returncode, proc.stderr


def test_crd_file_exists_and_is_served(kube_cluster: Cluster) -> None:
    assert CRD.is_file(), f"{CRD} is missing; generate it with `python -m kuberl.api.crd`"
    name = yaml.safe_load(CRD.read_text())["metadata"]["name"]
    assert kube_cluster.get("crd", name) is not None


def test_reference_manifest_is_accepted(kube_cluster: Cluster) -> None:
    rc, err = dry_run_create(kube_cluster, valid_manifest())
    assert rc == 0, err


def test_server_side_cases_cover_both_layers() -> None:
    assert {c.layer for c in SERVER_CASES} == {"cel", "schema"}


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c.id for c in SERVER_CASES])
def test_bad_manifest_is_rejected_with_the_rule_message(kube_cluster: Cluster,
                                                        case: BadCase) -> None:
    rc, err = dry_run_create(kube_cluster, case.manifest)
    assert rc != 0, f"apiserver accepted {case.id}"
    if case.layer == "cel":
        # Our own rule's message, word for word as kuberl.api declares it.
        assert case.message in err, f"{case.id}: expected {case.message!r} in: {err}"
    else:
        # The apiserver's own wording for schema errors ("Required value", ...), at the field.
        assert case.message.lower() in err.lower(), f"{case.id}: want {case.message!r} in: {err}"
        assert case.field in err, f"{case.id}: expected the field {case.field} in: {err}"
