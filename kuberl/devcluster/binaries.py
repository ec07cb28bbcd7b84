"""Where ``hack/cluster/build.sh`` caches the control-plane binaries, and a check that they are all
there."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kuberl.errors import ClusterError

K8S_VERSION = "v1.36.3"  # keep in step with hack/cluster/build.sh and hack/cluster/kube/go.mod
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
            "kubectl")
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "hack" / "cluster" / "build.sh"


def cache_root() -> Path:
    """``${KUBERL_CACHE:-~/.cache/kuberl}/cluster/<k8s-version>``: outside git, keyed by version."""
    base = Path(os.environ.get("KUBERL_CACHE") or Path.home() / ".cache" / "kuberl")
    return base / "cluster" / K8S_VERSION


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every executable a local cluster runs, the KubeRay CRD folder and kwok's
    stages."""

    bin_dir: Path
    kuberay_crds: Path
    kwok_stages: Path

    def path(self, name: str) -> str:
        return str(self.bin_dir / name)

    @property
    def kuberay_operator(self) -> Path | None:
        """The KubeRay operator binary when it could be built (it is optional)."""
        candidate = self.bin_dir / "kuberay-operator"
        return candidate if os.access(candidate, os.X_OK) else None

    @property
    def kueue(self) -> Path | None:
        """Kueue's controller manager when it could be built (optional, like KubeRay's)."""
        candidate = self.bin_dir / "kueue"
        return candidate if os.access(candidate, os.X_OK) else None

    @property
    def kueue_crds(self) -> Path:
        return self.bin_dir.parent / "crds" / "kueue"

    @property
    def kueue_webhooks(self) -> Path:
        """Kueue's own webhook manifests (service-based), copied from its module by build.sh."""
        return self.bin_dir.parent / "kueue" / "webhooks.yaml"


def find_binaries(bin_dir: Path | None = None) -> Binaries:
    """Locate the binaries (``KUBERL_CLUSTER_BIN`` overrides the cache); raise ClusterError naming
    what is missing and how to build it."""
    root = cache_root()
    bin_dir = bin_dir or Path(os.environ.get("KUBERL_CLUSTER_BIN") or root / "bin")
    missing = [name for name in REQUIRED if not os.access(bin_dir / name, os.X_OK)]
    crds = bin_dir.parent / "crds" / "kuberay"
    if not list(crds.glob("ray.io_*.yaml")):
        missing.append("crds/kuberay/ray.io_*.yaml")
    stages = bin_dir.parent / "kwok" / "stages.yaml"
    if not stages.is_file():
        missing.append("kwok/stages.yaml")
    if missing:
        raise ClusterError(
            f"local control-plane binaries missing in {bin_dir}: {', '.join(missing)}; "
            f"run {BUILD_SCRIPT} (or `kuberl dev cluster build`) once to build and cache them "
            "(a cold build takes tens of minutes on 2 cores; a warm one returns at once)"
        )
    return Binaries(bin_dir=bin_dir, kuberay_crds=crds, kwok_stages=stages)
