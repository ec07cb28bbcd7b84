"""The one loader for user extension points given as import paths (reward, filters, generate).

Accepts ``pkg.module:function`` (preferred) and slime's dotted ``pkg.module.function``; every failure
is an ImportPathError naming the field, the path and what to fix.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from kuberl.errors import ImportPathError


def split_import_path(path: str) -> tuple[str, str]:
    """``"a.b:c"`` or ``"a.b.c"`` -> (``"a.b"``, ``"c"``)."""
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr or ":" in attr:
        raise ImportPathError(
            f"{path!r} is not an import path; write it as package.module:function")
    return module, attr


def load_callable(path: str, field: str = "import path") -> Callable[..., Any]:
    """Import ``path`` and return the callable it names.

    ``field`` names the spec field the path came from (e.g. ``rollout.customRmPath``) so the
    message points the user at what to change.
    """
    module_name, attr = split_import_path(path) if path else ("", "")
    if not module_name:
        raise ImportPathError(f"{field}: empty import path; write it as package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ImportPathError(
            f"{field}: cannot import module {module_name!r} from {path!r} ({e}); install the "
            "package in the worker image or fix the module name") from e
    except Exception as e:
        raise ImportPathError(
            f"{field}: importing {module_name!r} from {path!r} raised {type(e).__name__}: {e}"
        ) from e
    try:
        obj = getattr(module, attr)
    except AttributeError as e:
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:10]
        raise ImportPathError(
            f"{field}: module {module_name!r} has no attribute {attr!r} (path {path!r}); "
            f"it defines e.g. {public}") from e
    if not callable(obj):
        raise ImportPathError(
            f"{field}: {path!r} is a {type(obj).__name__}, not a function or callable class")
    return obj
