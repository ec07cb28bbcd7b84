"""The engine host actor starts before its engine can: its module must not import torch (8 s of the
local start-up on 2 cores, measured in issue 15)."""

from __future__ import annotations

import subprocess
import sys


def test_engine_host_imports_neither_torch_nor_transformers() -> None:
    code = ("import sys, kuberl.worker.engine.host\n"
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
