"""Project-wide fixtures. ``kube_cluster`` is one real local control plane per test session (etcd,
kube-apiserver, controller manager, scheduler, kwok with fake H100 nodes; see
docs/local-control-plane.md).

- ``KUBERL_TEST_KUBECONFIG=<path>`` reuses a running cluster instead (e.g. from ``kuberl dev
  cluster up``).
- Missing binaries make every test marked ``cluster`` FAIL with the command that builds them,
  unless ``KUBERL_SKIP_CLUSTER=1``, which skips them instead.

``kueue_cluster`` is a second control plane, started only by the tests that ask for it, with Kueue's
CRDs, its controller manager and the real KubeRay operator (watching ``kuberay-system``). Kueue's
build is best effort: without its binary those tests skip on a developer machine and FAIL under CI
(``CI`` set), where build.sh must have produced it.
- ``@pytest.mark.tool("prometheus", ...)`` names binaries a test drives: missing ones skip it locally
  and FAIL it when ``CI`` is set (tests/tools.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from kuberl.errors import ClusterError

try:
    from kuberl.devcluster import (
        Binaries,
        Cluster,
        attach,
        find_binaries,
        start_cluster,
        stop_cluster,
    )
    from kuberl.devcluster.kueue import require_kueue
except ImportError as missing:  # the GPU machine has no operator extra (cryptography): it runs no cluster test
    _DEVCLUSTER_IMPORT_ERROR: ImportError | None = missing
else:
    _DEVCLUSTER_IMPORT_ERROR = None
from tests.tools import require

CLUSTER_NODES = 2  # fake 8×H100 nodes the session cluster starts with


def _cluster_unavailable() -> str | None:
    """Why no cluster can be provided (missing binaries), or None."""
    if _DEVCLUSTER_IMPORT_ERROR is not None:
        return f"kuberl.devcluster cannot be imported ({_DEVCLUSTER_IMPORT_ERROR}); install the operator extra"
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Release what tests left running inside this process (Ray's driver, Megatron's and torch's
    process groups) while the interpreter is whole, and name any gloo threads that outlive it."""
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    if "megatron.core.parallel_state" in sys.modules:
        from kuberl.worker.train.megatron_model import release_parallel

        release_parallel()
    elif "torch.distributed" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    left = _gloo_threads()
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"gloo threads still running at the end of the session: {left}")


def _gloo_threads() -> list[str]:
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return []
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:
            continue
    return sorted(n for n in names if "gloo" in n)


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


def running_job_pod_stages(binaries: Binaries, directory: Path) -> Path:
    """kwok's stages without ``pod-complete``: pods of batch Jobs keep Running. KubeRay's submitter
    (a Job in K8sJobMode) runs ``ray job submit`` for as long as the Ray job runs; completed at once,
    KubeRay fails the RayJob 30 s later ("the RayJob submitter finished ... but the ray job did not
    reach terminal state"), which would end every queued job before it could be preempted."""
    docs = [d for d in yaml.safe_load_all(binaries.kwok_stages.read_text()) if d]
    kept = [d for d in docs if d["metadata"]["name"] != "pod-complete"]
    assert len(kept) == len(docs) - 1, "kwok's stages no longer have pod-complete"
    path = directory / "kwok-stages.yaml"
    path.write_text(yaml.safe_dump_all(kept))
    return path


@pytest.fixture(scope="session")
def kueue_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A control plane of its own with real Kueue (v0.17, RayJob integration) and the real KubeRay
    operator; queue tests create their jobs in ``kuberay-system``, the namespace KubeRay watches."""
    if os.environ.get("KUBERL_SKIP_CLUSTER") == "1":
        pytest.skip("KUBERL_SKIP_CLUSTER=1: the local control plane is not started")
    problem = _cluster_unavailable()
    if problem:
        pytest.fail(problem, pytrace=False)
    binaries = find_binaries()
    missing = None
    try:
        require_kueue(binaries)
    except ClusterError as exc:
        missing = str(exc)
    if missing is None and binaries.kuberay_operator is None:
        missing = "the KubeRay operator binary was not built (hack/cluster/build.sh)"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Kueue tests: {missing}", pytrace=False)
        pytest.skip(missing)
    directory = tmp_path_factory.mktemp("kueue-cluster")
    cluster = start_cluster(directory, nodes=CLUSTER_NODES, kuberay_operator=True,
                            kueue_manager=True, remove_on_stop=False, die_with_parent=True,
                            timeout=180, binaries=dataclasses.replace(
                                binaries, kwok_stages=running_job_pod_stages(binaries, directory)))
    try:
        yield cluster
    finally:
        assert cluster.state is not None
        stop_cluster(cluster.state)
