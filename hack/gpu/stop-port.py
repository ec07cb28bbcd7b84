"""Stop the SGLang server listening on a port, by the PID of its process group (never by a name pattern).

    python3 hack/gpu/stop-port.py 30002
"""

import os
import signal
import sys
import time
from pathlib import Path

port = sys.argv[1]
for proc in Path("/proc").iterdir():
    if not proc.name.isdigit():
        continue
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        continue
    args = [a.decode(errors="replace") for a in argv]
    if "sglang.launch_server" in args and "--port" in args and args[args.index("--port") + 1] == port:
        pid = int(proc.name)
        os.killpg(os.getpgid(pid), signal.SIGTERM)  # the server and its scheduler children
        for _ in range(100):
            if not Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.1)
        print(f"stopped sglang on :{port} (pid {pid})")
