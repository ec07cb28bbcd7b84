"""External tools the tests drive (Prometheus, promtool, node, kubectl, the KubeRay operator): locally a
missing one skips its tests with the command that installs it; under CI it fails them, so a broken CI
image can never turn a suite green by skipping."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

# Binary on PATH -> how to get it (the README's `make test` runs all of these).
INSTALL = {
    "prometheus": "run hack/install-tools.sh",
    "promtool": "run hack/install-tools.sh",
    "node": "install Node.js (the Prometheus Operator models are an npm package)",
    "npm": "install Node.js (the Prometheus Operator models are an npm package)",
    "kubectl": "run hack/cluster/build.sh or hack/fetch-helm.sh",
}


def in_ci() -> bool:
    """CI services set ``CI`` (GitHub Actions, GitLab, Buildkite...; .ci/run exports it too)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_tool(what: str, fix: str) -> NoReturn:
    """Skip the current test locally; fail it under CI, where every tool must be installed."""
    message = f"{what} missing: {fix}"
    if in_ci():
        pytest.fail(f"{message} (CI is set: a missing tool fails the run instead of skipping)",
                    pytrace=False)
    pytest.skip(message)


def require(name: str) -> str:
    """The path of binary ``name`` on PATH, or ``missing_tool`` with its install hint."""
    found = shutil.which(name)
    if found is None:
        missing_tool(name, INSTALL.get(name, "install it"))
    return found
