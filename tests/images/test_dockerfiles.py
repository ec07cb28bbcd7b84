"""The Dockerfiles' pins agree with pyproject.toml, cover every dependency of their extras, and the images run
as non-root users (no image is built here: there is no Docker engine)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Image -> the pyproject extras it must install (plus the base dependencies).
IMAGES = {
    "operator": ("operator",),
    "worker": ("worker", "megatron", "sglang"),
}


def _dockerfile(image: str) -> str:
    return (REPO / "images" / image / "Dockerfile").read_text()


def pins(text: str) -> dict[str, Requirement]:
    """Return every quoted ``"name[extras]==version"`` requirement in a Dockerfile, by canonical name."""
    found = [Requirement(m) for m in re.findall(r'"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?==[^"]+)"', text)]
    return {canonicalize_name(r.name): r for r in found}


def required(extras: tuple[str, ...]) -> dict[str, list[Requirement]]:
    reqs = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    out: dict[str, list[Requirement]] = {}
    for r in reqs:
        out.setdefault(canonicalize_name(r.name), []).append(r)
    return out


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_pin_is_exact_and_satisfies_pyproject(image: str) -> None:
    pinned = pins(_dockerfile(image))
    assert pinned, f"no pins found in images/{image}/Dockerfile"
    wanted = required(IMAGES[image])
    for name, pin in pinned.items():
        [version] = [s.version for s in pin.specifier]
        for req in wanted.get(name, []):
            assert req.specifier.contains(version, prereleases=True), (
                f"images/{image}: {pin} does not satisfy pyproject's {req}")
            assert req.extras <= pin.extras, f"images/{image}: {pin} lacks extras {req.extras - pin.extras}"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_pyproject_dependency_is_pinned(image: str) -> None:
    pinned = pins(_dockerfile(image))
    missing = sorted(set(required(IMAGES[image])) - set(pinned))
    assert not missing, f"images/{image}/Dockerfile pins nothing for {missing}"


def test_operator_image_has_no_torch() -> None:
    text = _dockerfile("operator").lower()
    assert "torch" not in pins(text) and "pip install torch" not in text


def test_pin_parser_reads_extras_and_versions() -> None:
    found = pins('RUN pip install "ray[default]==2.60.0" "kopf==1.45.2" unpinned')
    assert {n: str(r) for n, r in found.items()} == {"ray": "ray[default]==2.60.0", "kopf": "kopf==1.45.2"}


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_images_run_as_a_numeric_non_root_user(image: str) -> None:
    users = re.findall(r"^USER\s+(\S+)", _dockerfile(image), flags=re.M)
    assert users, f"images/{image} never sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"images/{image}: final USER {users[-1]} must be a non-root uid"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_images_are_pinned_tags(image: str) -> None:
    for ref in re.findall(r"^ARG \w+_IMAGE=(\S+)", _dockerfile(image), flags=re.M):
        tag = ref.rsplit(":", 1)[-1]
        assert ":" in ref and tag != "latest" and re.search(r"\d+\.\d+", tag), ref


def test_operator_uid_is_the_charts_run_as_user() -> None:
    values = yaml.safe_load((REPO / "charts" / "kuberl" / "values.yaml").read_text())
    [user] = re.findall(r"^USER\s+(\d+)", _dockerfile("operator"), flags=re.M)
    assert int(user) == values["podSecurityContext"]["runAsUser"]


def test_worker_image_python_is_the_one_megatron_needs() -> None:
    assert "python3.12" in _dockerfile("worker")
