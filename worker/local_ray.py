"""What a local run asks of Ray before it starts: every listener on loopback, and a token on every call.

Ray 2.60 resolves ``_node_ip_address="127.0.0.1"`` to the host's routable address (``resolve_ip_for_localhost``),
so its gRPC servers, agents and metrics exporters listen on all interfaces. Its one switch for a loopback-only
node is the variable it uses on macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``: the node's IP
becomes 127.0.0.1 and every server binds it. Token authentication (Ray's own, ``RAY_AUTH_MODE=token``) is
turned on with a fresh per-run token held in the environment, so nothing is written to ``~/.ray`` and a
process on the same machine that lacks the token is refused.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import MutableMapping
from typing import Any

LOOPBACK_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_ray_environment(env: MutableMapping[str, str]) -> dict[str, str]:
    """Set (and return) the variables a loopback-only, token-guarded local Ray needs; the user's own
    ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` win."""
    added: dict[str, str] = {LOOPBACK_ONLY: "0"}
    if "RAY_AUTH_MODE" not in env:
        added["RAY_AUTH_MODE"] = "token"
    mode = env.get("RAY_AUTH_MODE", added.get("RAY_AUTH_MODE", ""))
    if mode.lower() == "token" and "RAY_AUTH_TOKEN" not in env and "RAY_AUTH_TOKEN_PATH" not in env:
        added["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    env.update(added)
    return added


def prepare_local_ray() -> None:
    """Apply ``local_ray_environment`` to this process (its children inherit it) before ``ray.init``.

    Ray reads the loopback switch when ``ray._private.ray_constants`` is imported and caches its auth
    settings in its C++ config; when something imported Ray earlier in this process, both are refreshed
    here (what Ray itself does when it turns token auth on).
    """
    local_ray_environment(os.environ)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False  # type: ignore[attr-defined]
    if "ray._raylet" in sys.modules:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


STARTUP_TIMEOUT = "timed out during startup"  # Ray's message when its raylet missed the fixed 30 s wait


def init_local_ray(attempts: int = 3, **init_kwargs: Any) -> None:
    """``ray.init`` for a local run, retried when Ray's node misses its start-up window.

    Ray 2.60 gives a new raylet a fixed 30 s to register (and its agent 15 s to report a port); on a loaded
    laptop or CI runner that runs out now and then, and one more try almost always succeeds. Any other
    failure is raised at once.
    """
    import ray

    init_kwargs.setdefault("address", "local")  # a new node of our own, never another `ray start` cluster
    for attempt in range(1, attempts + 1):
        try:
            ray.init(**init_kwargs)
            return
        except Exception as exc:  # Ray raises a bare Exception here
            if STARTUP_TIMEOUT not in str(exc) or attempt == attempts:
                raise
            ray.shutdown()
            print(f"kuberl: Ray's local node did not come up in Ray's fixed start-up window (a busy machine?); "
                  f"trying again ({attempt + 1}/{attempts})", file=sys.stderr, flush=True)
