"""docs/walkthrough.md runs as written against a fresh local control plane and reaches Running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "walkthrough.md"


def walkthrough_script() -> str:
    """The doc's one ```bash walkthrough block."""
    [block] = re.findall(r"```bash walkthrough\n(.*?)```", DOC.read_text(), flags=re.S)
    return block


def test_the_walkthrough_block_ends_with_cluster_down_and_uses_cluster_env() -> None:
    script = walkthrough_script()
    assert 'eval "$(kuberl dev cluster env)"' in script
    assert script.strip().endswith("kuberl dev cluster down")


def test_the_walkthrough_reaches_running(tmp_path: Path) -> None:
    if os.environ.get("KUBERL_TEST_KUBECONFIG"):
        pytest.skip("the walkthrough starts its own cluster")
    cluster_dir = tmp_path / "devcluster"
    env = {**os.environ, "KUBERL_DEVCLUSTER_DIR": str(cluster_dir),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    env.pop("KUBECONFIG", None)
    script = "set -euo pipefail\n" + walkthrough_script()
    proc = subprocess.Popen(["bash", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if (cluster_dir / "state.json").exists():  # the script failed before its last line
            subprocess.run([str(Path(sys.executable).parent / "kuberl"), "dev", "cluster", "down",
                            "--dir", str(cluster_dir)], check=False, timeout=120)
        operator_log = ROOT / "operator.log"
        log = operator_log.read_text()[-3000:] if operator_log.exists() else ""
        operator_log.unlink(missing_ok=True)
    assert proc.returncode == 0, out[-5000:] + "\n--- operator.log\n" + log
    assert re.search(r"glm4-9b-dapo-math\s+Running", out), out[-3000:]
    events = out[out.index("Events:"):]
    # kubectl's Events table order depends on its version (1.36 lists newest first) and on
    # timestamps of one-second resolution, so the test asks that every transition was announced.
    transitions = {m.group(1) for m in re.finditer(r"phase (\w+ -> \w+)", events)}
    assert {"none -> Pending", "Pending -> Starting", "Starting -> Running"} <= transitions, events
    assert "h100-" in out  # pods scheduled on the fake H100 nodes
