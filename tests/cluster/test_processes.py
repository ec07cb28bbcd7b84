"""Component processes are stopped as whole process groups, even from a process that did not start
them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from kuberl.devcluster.processes import ProcessRecord, is_running, spawn, stop


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _alive(pid: int) -> bool:
    """A live process, not a zombie waiting for whichever ancestor adopted it to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_stop_kills_the_forked_grandchildren_too(tmp_path: Path) -> None:
    rec = spawn("forker", ["sh", "-c", "sleep 300 & sleep 300 & wait"], tmp_path)
    deadline = time.monotonic() + 5
    while len(_children(rec.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    kids = _children(rec.pid)
    assert len(kids) == 2
    stop(rec, grace=5)
    assert not is_running(rec)
    assert not any(_alive(k) for k in kids), "a forked child survived"


def test_stop_from_another_process_uses_the_recorded_pid(tmp_path: Path) -> None:
    rec = spawn("sleeper", ["sleep", "300"], tmp_path)
    code = ("from kuberl.devcluster.processes import ProcessRecord, stop; "
            f"stop(ProcessRecord(name='sleeper', pid={rec.pid}, "
            f"start_ticks={rec.start_ticks}, log=''))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)
    deadline = time.monotonic() + 5
    while is_running(rec) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(rec)


def test_a_recycled_pid_is_not_mistaken_for_the_component() -> None:
    import os

    # Our own PID with a different start time: the record must be seen as "not running", so stop()
    # would never signal an unrelated process that reuses a component's PID.
    foreign = ProcessRecord(name="ghost", pid=os.getpid(), start_ticks=1, log="")
    assert not is_running(foreign)


def test_components_tied_to_a_killed_starter_die_with_it(tmp_path: Path) -> None:
    # A starter process spawns a component with die_with_parent, prints its PID, then is SIGKILLed
    # (as `timeout` kills a hung test run): the kernel must take the component down too.
    code = ("import time; from pathlib import Path; "
            "from kuberl.devcluster.processes import spawn; "
            f"r = spawn('c', ['sleep', '300'], Path({str(tmp_path)!r}), die_with_parent=True); "
            "print(r.pid, flush=True); time.sleep(300)")
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert starter.stdout is not None
    component = int(starter.stdout.readline())
    assert _alive(component)
    starter.kill()
    starter.wait(timeout=10)
    deadline = time.monotonic() + 5
    while _alive(component) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(component), "the component outlived its killed starter"
