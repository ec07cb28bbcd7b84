"""A cache of etcd data directories with the CRDs already stored, keyed by the CRD files' content.

Installing and establishing ~2 MB of CRD schemas is the slowest step of a start; a copy of a data
directory where that already happened skips it. A changed CRD file simply yields a new key (and a
new template).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from kuberl.devcluster.binaries import K8S_VERSION, Binaries


def template_dir(b: Binaries, crd_paths: Sequence[Path]) -> Path:
    """Where an etcd data directory with exactly these CRDs already stored is cached. Starting from
    a copy skips installing and establishing ~2 MB of CRD schemas, the slowest step of a cold
    start."""
    digest = hashlib.sha256(K8S_VERSION.encode())
    digest.update((b.bin_dir / ".stamp-etcd").read_bytes() if (b.bin_dir / ".stamp-etcd").exists()
                  else b"")
    for path in crd_paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return b.bin_dir.parent / "etcd-templates" / digest.hexdigest()[:16]


def save_template(data_dir: Path, template: Path, keep: int = 3) -> None:
    """Copy a cleanly stopped etcd data directory into the template cache (atomically; a concurrent
    writer of the same template wins harmlessly) and keep only the ``keep`` newest templates."""
    template.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-", dir=template.parent))
    shutil.copytree(data_dir, staging / "etcd")
    with contextlib.suppress(OSError):  # another session saved the same template first
        (staging / "etcd").rename(template)
    shutil.rmtree(staging, ignore_errors=True)
    others = sorted((p for p in template.parent.iterdir() if not p.name.startswith(".")),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for old in others[keep:]:
        shutil.rmtree(old, ignore_errors=True)
