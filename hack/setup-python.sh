#!/usr/bin/env bash
# Create (or reuse) .venv with kuberl and its extras installed. Prefers Python 3.12 (megatron-core needs it).
# Usage: hack/setup-python.sh [extras]   (default extras: operator,worker,megatron,dev — the Megatron
# backend's CPU tests run in CI on gloo, so megatron-core is part of the development install)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-operator,worker,megatron,dev}"

pick_python() {
  for candidate in python3.12 "$HOME/.pyenv/versions/3.12"*/bin/python3.12 python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && (cd / && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))') 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: kuberl needs Python >= 3.11 (3.12 preferred); install it and re-run" >&2
  return 1
}

if [ ! -x .venv/bin/python ]; then
  py="$(pick_python)"
  echo "creating .venv with $("$py" --version)" >&2
  # Run from / : with the repository as the working directory, `python -m` would put it first on sys.path
  # and its operator/ folder would shadow the standard library's `operator` module.
  repo="$(pwd)"
  (cd / && "$py" -m venv "$repo/.venv")
fi
if [ ! -x .venv/bin/uv ]; then
  .venv/bin/pip install --quiet uv
fi
stamp=".venv/.kuberl-installed-$(cat pyproject.toml setup.py | sha1sum | cut -c1-12)-${extras//,/-}"
if [ ! -f "$stamp" ]; then
  .venv/bin/uv pip install --quiet --python .venv/bin/python -e ".[${extras}]"
  touch "$stamp"
fi
echo ".venv ready ($(.venv/bin/python --version))" >&2
