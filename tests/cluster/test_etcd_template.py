"""The etcd template cache is keyed by CRD content, saved atomically, and pruned to the newest few.
"""

from __future__ import annotations

import os
from pathlib import Path

from kuberl.devcluster.binaries import Binaries
from kuberl.devcluster.etcd_template import save_template, template_dir


def _binaries(root: Path) -> Binaries:
    (root / "bin").mkdir(parents=True)
    (root / "bin" / ".stamp-etcd").write_text("abc\n")
    return Binaries(bin_dir=root / "bin", kuberay_crds=root / "crds",
                    kwok_stages=root / "stages.yaml")


def test_key_follows_crd_content_not_file_timestamps(tmp_path: Path) -> None:
    b = _binaries(tmp_path)
    crd = tmp_path / "ours.yaml"
    crd.write_text("kind: CustomResourceDefinition\nspec: {a: 1}\n")
    first = template_dir(b, [crd])
    os.utime(crd, (1, 1))
    assert template_dir(b, [crd]) == first
    crd.write_text("kind: CustomResourceDefinition\nspec: {a: 2}\n")
    assert template_dir(b, [crd]) != first
    assert first.parent == tmp_path / "etcd-templates"


def test_save_copies_the_data_and_keeps_only_the_newest(tmp_path: Path) -> None:
    data = tmp_path / "etcd"
    (data / "member").mkdir(parents=True)
    (data / "member" / "db").write_bytes(b"bbolt")
    root = tmp_path / "templates"
    for i in range(5):
        save_template(data, root / f"t{i}", keep=3)
        os.utime(root / f"t{i}", (i + 10, i + 10))  # mtime order = save order
    assert sorted(p.name for p in root.iterdir()) == ["t2", "t3", "t4"]
    assert (root / "t4" / "member" / "db").read_bytes() == b"bbolt"
    save_template(data, root / "t4", keep=3)  # a second writer of the same key is harmless
    assert (root / "t4" / "member" / "db").read_bytes() == b"bbolt"
