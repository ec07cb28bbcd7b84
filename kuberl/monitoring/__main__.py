"""``python -m kuberl.monitoring [--check]``: rewrite (or check) the chart's dashboards and alert rules."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kuberl.monitoring import alerts, dashboards

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "charts" / "kuberl"
RULES_FILE = CHART / "rules" / "kuberl-alerts.yaml"
DASHBOARD_DIR = CHART / "dashboards"


def outputs() -> dict[Path, str]:
    """Return every generated file's path and text."""
    files = {DASHBOARD_DIR / name: text for name, text in dashboards.render().items()}
    files[RULES_FILE] = alerts.render()
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberl.monitoring", description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed file differs")
    args = parser.parse_args(argv)
    stale = []
    for path, text in outputs().items():
        if path.exists() and path.read_text() == text:
            continue
        if args.check:
            stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO_ROOT)}")
    for path in stale:
        print(f"stale: {path.relative_to(REPO_ROOT)} (run python -m kuberl.monitoring)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
