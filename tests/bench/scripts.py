"""Load a bench/ script as a module, as the tests of each benchmark do (bench/ is not a package)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"


def load_script(name: str, on_path: bool = False) -> ModuleType:
    """``bench/<name>.py`` as module ``name``, registered in sys.modules (dataclasses and pickling need
    that). ``on_path`` puts bench/ on sys.path, as when run as a script (grading-pool children import it)."""
    if on_path:
        sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
