#!/usr/bin/env bash
# On the CPU machine (network): download what the GPU machine lacks into .whl/<group>/ of the checkout the
# coordinator runs from (default /work/main; git-ignored there, never committed). Groups = carry units:
#   .whl/base    pytest-asyncio (call 1; unpacked only if the GPU machine lacks it)         ~20 KB
#   .whl/router  smg 1.13.0, LZMA-repacked (37 MB wheel -> ~24 MiB)                          (call 2)
#   .whl/ray     ray 2.60.0 cp312 stripped + LZMA (76 MiB wheel -> ~27 MiB; no Java jar, dashboard UI,
#                RLlib/Tune/Serve/Data/Train/LLM), and ray's small deps: click, msgpack, protobuf,
#                requests (+urllib3, idna, certifi, charset-normalizer), filelock, packaging    (call 2)
# Call 2 carries router + ray: about 53 MiB with the 2 MB tree, under the 64 MiB limit.
#     hack/gpu/fetch-wheels.sh [DEST_ROOT]      (a few minutes: LZMA of two large native libraries)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-/work/main}/.whl
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
plat="--only-binary=:all: --python-version 3.12 --implementation cp"
for p in 34 28 27 26 24 17 5; do plat="$plat --platform manylinux_2_${p}_x86_64"; done
plat="$plat --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
dl() { python3 -m pip download -q --no-deps $plat -d "$1" "${@:2}"; }
mkdir -p "$dest/base" "$dest/router" "$dest/ray"
dl "$dest/base" "pytest-asyncio==1.5.0"
if ! ls "$dest"/router/smg-*.zip >/dev/null 2>&1; then
  dl "$work" "smg==1.13.0"
  python3 "$here/repack.py" "$work"/smg-1.13.0-*.whl "$dest/router/smg-1.13.0-lzma.zip"
fi
if ! ls "$dest"/ray/ray-*.zip >/dev/null 2>&1; then
  dl "$work" "ray==2.60.0"
  python3 "$here/repack.py" --ray-unused "$work"/ray-2.60.0-*.whl "$dest/ray/ray-2.60.0-stripped-lzma.zip"
fi
dl "$dest/ray" click "msgpack<2" protobuf requests urllib3 idna certifi charset-normalizer filelock "packaging>=24.2"
du -sh "$dest"/*; du -ch "$dest/router" "$dest/ray" | tail -1
