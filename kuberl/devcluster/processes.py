"""Component processes: each runs in its own session (process group), so stopping it by PID also
stops anything it forked, and a different process (``kuberl dev cluster down``) can stop it from
a recorded PID."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRecord:
    """What identifies a running component across processes: its PID (= process group id) and the
    kernel's start time for that PID, so a recycled PID is never mistaken for ours."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def free_port() -> int:
    """An unused loopback TCP port (the kernel picks it; the tiny reuse race is acceptable for a dev
    cluster)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), or None when the PID is gone or a
    zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may contain spaces
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _die_with_parent() -> None:
    """In the child before exec: have the kernel SIGKILL it when the spawning process dies, so a
    test run killed by a timeout cannot leave an apiserver behind (PR_SET_PDEATHSIG = 1)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None, *,
          die_with_parent: bool = False) -> ProcessRecord:
    """Start ``argv`` in a new session with stdout and stderr appended to ``<log_dir>/<name>.log``.
    ``die_with_parent`` ties its life to this process (tests); without it, it outlives us
    (``up``)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, close_fds=True,
                                preexec_fn=_die_with_parent if die_with_parent else None)
    ticks = _start_ticks(proc.pid)
    return ProcessRecord(name=name, pid=proc.pid, start_ticks=ticks or 0, log=str(log_path))


def is_running(record: ProcessRecord) -> bool:
    """True while the recorded process (not a later process reusing its PID) is alive."""
    return _start_ticks(record.pid) == record.start_ticks


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members may be zombies of a parent that already exited; only live members count.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(record: ProcessRecord, grace: float = 10.0) -> None:
    """SIGTERM the component's whole process group, then SIGKILL what is left after ``grace``
    seconds."""
    if not is_running(record) and not _group_alive(record.pid):
        _reap(record.pid)
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(record.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(record.pid)
            if not _group_alive(record.pid):
                return
            time.sleep(0.05)
    _reap(record.pid)


def cpu_seconds(record: ProcessRecord) -> float:
    """User + system CPU time the process has used so far (0 when gone): a load-independent cost
    figure."""
    try:
        stat = Path(f"/proc/{record.pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log_tail(record: ProcessRecord, lines: int = 25) -> str:
    """The last lines of the component's log, for error messages."""
    try:
        text = Path(record.log).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
