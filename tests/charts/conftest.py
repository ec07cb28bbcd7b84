"""Real helm binaries (v3 and v4) and a chart renderer for the chart tests."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kuberl"
FEATURE_VALUES = CHART / "ci" / "feature-values.yaml"
VALUE_SETS = {"default": [], "feature": [FEATURE_VALUES]}
NAMESPACE = "kuberl-system"


def _tools_dir() -> Path:
    """Run hack/fetch-helm.sh (a no-op once cached) and return the tools directory it prints."""
    out = subprocess.run([str(REPO / "hack" / "fetch-helm.sh")], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        pytest.fail(f"hack/fetch-helm.sh failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def helm_binaries() -> dict[str, Path]:
    """Return {"helm3": path, "helm4": path}; KUBERL_HELM3 / KUBERL_HELM4 override the cached ones."""
    env = {name: os.environ.get(f"KUBERL_{name.upper()}") for name in ("helm3", "helm4")}
    if all(env.values()):
        return {name: Path(path) for name, path in env.items() if path}
    tools = _tools_dir()
    return {"helm3": tools / "helm-v3" / "helm", "helm4": tools / "helm-v4" / "helm"}


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HELM_CACHE_HOME": "/tmp/kuberl-helm-cache",
                               "HELM_CONFIG_HOME": "/tmp/kuberl-helm-config",
                               "HELM_DATA_HOME": "/tmp/kuberl-helm-data"})


def template_args(values: list[Path], sets: tuple[str, ...] = ()) -> list[str]:
    args = ["template", "rel", str(CHART), "--namespace", NAMESPACE, "--include-crds"]
    for path in values:
        args += ["-f", str(path)]
    for s in sets:
        args += ["--set", s]
    return args


@pytest.fixture(scope="session")
def render(helm_binaries: dict[str, Path]) -> Callable[..., list[dict[str, Any]]]:
    """``render("feature", helm="helm4", sets=("a=b",))`` -> the chart's objects as dicts."""
    cache: dict[tuple, list[dict[str, Any]]] = {}

    def _render(value_set: str = "default", helm: str = "helm4", sets: tuple[str, ...] = ()) -> list[dict]:
        key = (value_set, helm, sets)
        if key not in cache:
            out = run_helm(helm_binaries[helm], *template_args(VALUE_SETS[value_set], sets))
            assert out.returncode == 0, out.stderr
            cache[key] = [d for d in yaml.safe_load_all(out.stdout) if d]
        return cache[key]

    return _render


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
