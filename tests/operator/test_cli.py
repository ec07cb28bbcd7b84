"""`kuberl render` prints the same children the operator applies; `kuberl operator` parses its flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from kuberl.api import load_jobs
from kuberl.cli.main import build_parser
from kuberl.operator.render import RenderSettings, render_children

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "glm4-9b-dapo-math.yaml"


def test_render_prints_every_child_in_apply_order() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "kuberl.cli.main", "render", str(EXAMPLE), "-n", "team-a",
         "--worker-image", "img:1"],
        capture_output=True, text=True, check=True,
    ).stdout
    docs = list(yaml.safe_load_all(out))
    assert [d["kind"] for d in docs] == ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "RayJob"]
    job = load_jobs(EXAMPLE)[0]
    job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": "team-a"})})
    assert docs == render_children(job, RenderSettings(default_image="img:1")).in_apply_order()


def test_render_of_an_invalid_file_exits_2_with_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("rolloutNumGpus: 4", "rolloutNumGpus: 3"))
    proc = subprocess.run([sys.executable, "-m", "kuberl.cli.main", "render", str(bad)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "gpusPerEngine" in proc.stderr


def test_operator_flags_choose_namespaces_and_metrics_port() -> None:
    args = build_parser().parse_args(["operator", "-n", "a", "--namespace", "b", "--metrics-port", "0"])
    assert (args.namespaces, args.metrics_port) == (["a", "b"], 0)
    assert build_parser().parse_args(["operator"]).namespaces == []
