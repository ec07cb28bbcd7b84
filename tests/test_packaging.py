"""The distribution maps the top-level folders onto ``kuberl.*`` and never shadows the stdlib ``operator``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_operator_is_the_stdlib_even_from_the_repository_root() -> None:
    assert run("-c", "import operator; print(operator.__file__)").endswith("/operator.py")
    # `python -m` puts the working directory first on sys.path; the CLI still starts from the root.
    assert "validate" in run("-m", "kuberl.cli.main", "--help")


def test_folders_are_importable_under_kuberl() -> None:
    out = run("-c", "import kuberl.api, kuberl.operator, kuberl.worker; "
                    "print(kuberl.api.__file__, kuberl.operator.__file__, kuberl.worker.__file__)")
    api, operator, worker = out.split()
    assert api == str(ROOT / "api" / "__init__.py")
    assert operator == str(ROOT / "operator" / "__init__.py")
    assert worker == str(ROOT / "worker" / "__init__.py")


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "kuberl"
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "validate" in proc.stdout and "train" in proc.stdout
