"""Install wheels (or repacked wheel zips) into a folder without pip or network, keeping exec bits.

The GPU machine has no network; wheels are carried in .whl/<group>/. Extracting a wheel is all that
importing needs; console scripts (smg) are written as small launchers into TARGET/bin.
    python3 hack/gpu/unpack_wheels.py [--missing-only] TARGET WHEEL_OR_DIR...
``--missing-only`` skips a wheel whose top-level packages the interpreter already imports (the GPU
machine's own requests or packaging stay in charge).
"""

from __future__ import annotations

import configparser
import importlib.util
import os
import sys
import zipfile
from pathlib import Path

LAUNCHER = """#!{python}
import sys
sys.path.insert(0, {target!r})
from {module} import {attr}
sys.exit({attr}())
"""


def unpack(target: Path, wheel: Path) -> list[str]:
    """Extract one wheel into ``target``; return the console scripts written to target/bin."""
    scripts: list[str] = []
    with zipfile.ZipFile(wheel) as z:
        for info in z.infolist():
            path = z.extract(info, target)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
        entry = next((n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt")), None)
        if entry:
            parser = configparser.ConfigParser()
            parser.read_string(z.read(entry).decode())
            if parser.has_section("console_scripts"):
                (target / "bin").mkdir(parents=True, exist_ok=True)
                for name, ref in parser.items("console_scripts"):
                    module, _, attr = ref.strip().partition(":")
                    script = target / "bin" / name
                    script.write_text(LAUNCHER.format(python=sys.executable, target=str(target),
                                                      module=module, attr=attr.split(".")[0]))
                    script.chmod(0o755)
                    scripts.append(name)
    return scripts


def top_level(wheel: Path) -> set[str]:
    """Importable top-level names a wheel provides (first path parts, minus metadata folders)."""
    with zipfile.ZipFile(wheel) as z:
        names = {n.split("/")[0] for n in z.namelist()}
    return {n.removesuffix(".py") for n in names
            if not n.endswith((".dist-info", ".data")) and (n.isidentifier() or n.endswith(".py"))}


def already_importable(wheel: Path) -> bool:
    tops = {"google.protobuf" if t == "google" else t for t in top_level(wheel)}  # a namespace
    try:
        return bool(tops) and all(importlib.util.find_spec(t) is not None for t in tops)
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False


def main() -> None:
    args = sys.argv[1:]
    missing_only = "--missing-only" in args
    args = [a for a in args if a != "--missing-only"]
    target = Path(args[0]).resolve()
    target.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    for arg in args[1:]:
        p = Path(arg)
        wheels += sorted([*p.glob("*.whl"), *p.glob("*.zip")]) if p.is_dir() else [p]
    for wheel in wheels:
        if missing_only and already_importable(wheel):
            print(f"skipped {wheel.name}: {', '.join(sorted(top_level(wheel)))} already importable")
            continue
        scripts = unpack(target, wheel)
        print(f"unpacked {wheel.name} -> {target}" + (f" (scripts: {', '.join(scripts)})" if scripts else ""))


if __name__ == "__main__":
    main()
