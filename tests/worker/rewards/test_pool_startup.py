"""A grader's import time does not count against the per-sample deadline (start-up is not grading)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from kuberl.worker.rewards.pool import GradingPool, GradingTimeout


async def test_slow_import_is_outside_the_deadline_but_a_slow_call_is_not(tmp_path: Path, monkeypatch):
    (tmp_path / "slow_grader_mod.py").write_text(
        "import time\n"
        "time.sleep(2.0)  # like sympy's import on a loaded machine\n"
        "def score(x):\n"
        "    return x * 2\n"
        "def stuck(x):\n"
        "    time.sleep(30)\n"
    )
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    pool = GradingPool(workers=1, timeout_s=1.0)
    try:
        assert await pool.run("slow_grader_mod:score", 21) == 42
        with pytest.raises(GradingTimeout):
            await pool.run("slow_grader_mod:stuck", 1)
        assert pool.replaced == 1
        assert await pool.run("slow_grader_mod:score", 5) == 10  # the replacement imports again
    finally:
        pool.close()
