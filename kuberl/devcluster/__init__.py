"""A real local Kubernetes control plane for development and tests (``kuberl dev cluster``).

Binaries come from ``hack/cluster/build.sh`` (pinned Go modules, cached outside git); see
``docs/local-control-plane.md``.
"""

from __future__ import annotations

from kuberl.devcluster.binaries import K8S_VERSION, Binaries, cache_root, find_binaries
from kuberl.devcluster.cluster import (
    KUBERAY_NAMESPACE,
    Cluster,
    ClusterState,
    attach,
    start_cluster,
    start_kuberay_operator,
    start_kueue,
    stop_cluster,
)
from kuberl.devcluster.kuberay_emulator import KubeRayEmulator
from kuberl.devcluster.kueue import KUEUE_NAMESPACE
from kuberl.devcluster.nodes import FAKE_NODE_TOLERATIONS, GPU_PRODUCT, h100_node, h100_nodes

__all__ = [
    "FAKE_NODE_TOLERATIONS",
    "GPU_PRODUCT",
    "K8S_VERSION",
    "KUBERAY_NAMESPACE",
    "KUEUE_NAMESPACE",
    "Binaries",
    "Cluster",
    "ClusterState",
    "KubeRayEmulator",
    "attach",
    "cache_root",
    "find_binaries",
    "h100_node",
    "h100_nodes",
    "start_cluster",
    "start_kuberay_operator",
    "start_kueue",
    "stop_cluster",
]
