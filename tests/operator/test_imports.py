"""The operator image stays small: importing it must not pull in the worker's heavy stacks."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "ray", "megatron", "transformers", "sglang", "numpy")


def test_operator_imports_no_worker_dependencies() -> None:
    code = (
        "import sys, kuberl.operator.handlers, kuberl.operator.run, kuberl.cli.operator, "
        "kuberl.cli.render\n"
        "from kuberl.cli.main import build_parser\n"
        "build_parser()  # what `python -m kuberl.operator` loads: every verb's module\n"
        f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
