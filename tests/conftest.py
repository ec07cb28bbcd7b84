"""Project-wide fixtures. ``kube_cluster`` is one real local control plane per test session (etcd,
kube-apiserver, controller manager, scheduler, kwok with fake H100 nodes; see
docs/local-control-plane.md).

- ``KUBERL_TEST_KUBECONFIG=<path>`` reuses a running cluster instead (e.g. from ``kuberl dev
  cluster up``).
- Missing binaries make every test marked ``cluster`` FAIL with the command that builds them,
  unless ``KUBERL_SKIP_CLUSTER=1``, which skips them instead.
- ``@pytest.mark.tool("prometheus", ...)`` names binaries a test drives: missing ones skip it locally
  and FAIL it when ``CI`` is set (tests/tools.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from kuberl.devcluster import Cluster, attach, find_binaries, start_cluster, stop_cluster
from kuberl.errors import ClusterError
from tests.tools import require

CLUSTER_NODES = 2  # fake 8×H100 nodes the session cluster starts with


def _cluster_unavailable() -> str | None:
    """Why no cluster can be provided (missing binaries), or None."""
    if os.environ.get("KUBERL_TEST_KUBECONFIG"):
        return None
    try:
        find_binaries()
    except ClusterError as exc:
        return str(exc)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("tool"):  # @pytest.mark.tool("prometheus", ...): skip locally, fail in CI
        for name in marker.args:
            require(name)
    if item.get_closest_marker("cluster") is None:
        return
    if os.environ.get("KUBERL_SKIP_CLUSTER") == "1":
        pytest.skip("KUBERL_SKIP_CLUSTER=1: tests that need the local control plane are skipped")
    problem = _cluster_unavailable()
    if problem:
        pytest.fail(f"this test needs the local control plane: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def kube_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's real control plane; ``.kubeconfig``, ``.env``, ``.kubectl(...)``,
    ``.apply(...)``, ``.get(...)``. Its logs stay in pytest's temporary directory for
    post-mortems."""
    given = os.environ.get("KUBERL_TEST_KUBECONFIG")
    if given:
        yield attach(Path(given))
        return
    if os.environ.get("KUBERL_SKIP_CLUSTER") == "1":
        pytest.skip("KUBERL_SKIP_CLUSTER=1: the local control plane is not started")
    problem = _cluster_unavailable()
    if problem:
        pytest.fail(problem, pytrace=False)
    # die_with_parent: a session killed by a timeout must leave no apiserver on the shared machine.
    cluster = start_cluster(tmp_path_factory.mktemp("kube-cluster"), nodes=CLUSTER_NODES,
                            remove_on_stop=False, die_with_parent=True)
    try:
        yield cluster
    finally:
        assert cluster.state is not None
        stop_cluster(cluster.state)
