"""Install wheels (or repacked wheel zips) into a folder without pip or network, keeping exec bits.

The GPU machine has no network; wheels are carried in .whl/<group>/. Extracting a wheel is all that
importing needs; console scripts (smg) are written as small launchers into TARGET/bin.
    python3 hack/gpu/unpack_wheels.py TARGET WHEEL_OR_DIR...
"""

from __future__ import annotations

import configparser
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


def main() -> None:
    target = Path(sys.argv[1]).resolve()
    target.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    for arg in sys.argv[2:]:
        p = Path(arg)
        wheels += sorted([*p.glob("*.whl"), *p.glob("*.zip")]) if p.is_dir() else [p]
    for wheel in wheels:
        scripts = unpack(target, wheel)
        print(f"unpacked {wheel.name} -> {target}" + (f" (scripts: {', '.join(scripts)})" if scripts else ""))


if __name__ == "__main__":
    main()
