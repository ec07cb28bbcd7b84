"""The worker's one free-port picker (engines, the router, trainer rendezvous, weight-sync groups)."""

from __future__ import annotations

import random
import socket

# SGLang also binds port + 10000 (its gRPC server) and refuses anything above 65535.
SGLANG_MAX_PORT = 55000


def free_port(low: int | None = None, high: int | None = None) -> int:
    """A port free on every interface of this host now (the caller binds it moments later).

    Without a range the OS picks one; with ``[low, high)`` a random port in it (tried up to 200 times):
    engines ask for ``high=SGLANG_MAX_PORT``.
    """
    if low is None and high is None:
        with socket.socket() as s:
            s.bind(("", 0))
            return int(s.getsockname()[1])
    lo, hi = low or 1024, high or 65536
    for _ in range(200):
        port = random.randrange(lo, hi)
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in [{lo}, {hi})")
