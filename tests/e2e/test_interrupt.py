"""`kuberl train` as a well-kept tool: Ctrl-C and SIGTERM stop it with one line and no tracebacks, leave no
Ray process behind, every listener of the run (Ray's included) is on loopback, and a finished job answers at
once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import kuberl_cmd, tiny_job

pytestmark = pytest.mark.slow


def _session(sid: int) -> list[psutil.Process]:
    """Every live process of session ``sid`` (the run was started in a session of its own)."""
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def _cmdline(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


def _wait_rollouts(metrics: Path, count: int, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= count:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {count} rollouts within {timeout} s")


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_run_with_one_line_and_no_orphans(
    easy_tiny_build: Path, tmp_path: Path, how: str
) -> None:
    job = tiny_job(easy_tiny_build, tmp_path, rollout={"numRollout": 200, "batchSize": 8},
                   eval={"interval": None, "datasets": []},
                   checkpoint={"save": str(tmp_path / "checkpoints"), "saveInterval": 2})
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(kuberl_cmd("train", str(job), "--run-dir", str(run_dir), "--no-progress"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _wait_rollouts(run_dir / "metrics.jsonl", 3, proc, timeout=600)
        # Everything the run opens listens on loopback: kuberl's engines and metrics endpoint and Ray's own
        # gRPC servers, agents and exporters (worker/local_ray.py); the engines are among them.
        listening = {(p.pid, " ".join(_cmdline(p))[:80], c.laddr.ip, c.laddr.port)
                     for p in _session(proc.pid) for c in _connections(p) if c.status == psutil.CONN_LISTEN}
        assert any("kuberl.worker.engine.server" in cmd for _, cmd, _, _ in listening), listening
        assert {"gcs_server", "raylet"} <= {Path(cmd.split()[0]).name for _, cmd, _, _ in listening}, listening
        loopback = ("127.0.0.1", "::1", "::ffff:127.0.0.1")
        assert all(ip in loopback for _, _, ip, _ in listening), sorted(x for x in listening if x[2] not in loopback)
        if how == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        else:
            proc.send_signal(signal.SIGTERM)  # what `kill` or a supervisor does: the main process
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == (130 if how == "SIGINT" else 143), err[-3000:]
    assert "Traceback" not in err, err[-4000:]
    [line] = [ln for ln in err.splitlines() if "interrupted" in ln]
    assert f"interrupted ({how}) at rollout" in line and "last checkpoint at rollout" in line, line
    assert "rerun the same command to resume" in line
    deadline = time.monotonic() + 10
    while _session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session(proc.pid), [p.cmdline() for p in _session(proc.pid)]


def _connections(proc: psutil.Process) -> list:
    try:
        return proc.net_connections(kind="inet")
    except psutil.Error:
        return []


def test_a_finished_job_answers_already_complete_without_starting_ray(
    easy_tiny_build: Path, tmp_path: Path
) -> None:
    job = tiny_job(easy_tiny_build, tmp_path, rollout={"numRollout": 2, "batchSize": 8},
                   eval={"interval": None, "datasets": []},
                   checkpoint={"save": str(tmp_path / "checkpoints"), "saveInterval": 1})
    run_dir = tmp_path / "run"
    cmd = kuberl_cmd("train", str(job), "--run-dir", str(run_dir), "--no-progress")
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    started = time.monotonic()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already complete (2/2)" in again.stderr, again.stderr
    assert "--restart" in again.stderr
    assert time.monotonic() - started < 30  # no Ray, no engines
    assert "ray" not in again.stderr.lower().replace("--restart", "")
    restarted = subprocess.run([*cmd, "--restart"], capture_output=True, text=True, timeout=600)
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    assert "fresh start (rollout 0/2)" in restarted.stderr
    assert any(p.name.startswith("checkpoints.replaced-") for p in tmp_path.iterdir())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["rollout_id"] for r in rows] == [0, 1]
