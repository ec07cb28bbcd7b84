#!/usr/bin/env bash
# Run the SGLang protocol suite (tests/worker/rollout/test_protocol.py) against two real SGLang 0.5.14 servers on
# the GPU machine, and (when the smg wheel is there) the router check too. Logs go to $OUT (or /tmp/out).
#
#   CPU machine, once:  ../shared/tools/sglang-gpu/build-site.sh && echo /.gpu-sglang/ >> .git/info/exclude
#   GPU machine:        bash hack/gpu-sglang-protocol.sh            (carry .gpu-sglang; about 5 minutes)
#   second call, same hold, with the smg wheel carried in .whl/:  bash hack/gpu-sglang-protocol.sh
#   (the servers of the first call are reused when they still answer)
#
# Needs pytest-asyncio on the machine: a pytest_asyncio-*.whl in .whl/ is installed to /tmp/pyextra if missing.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${OUT:-/tmp/out}; mkdir -p "$out"
model=/tmp/kuberl-protocol-model
extra=/tmp/pyextra; mkdir -p "$extra"

# kuberl without installing it: the package folders mapped as setup.py maps them
pkg=/tmp/kuberl-pkg
if [ ! -d "$pkg/kuberl" ]; then
  mkdir -p "$pkg/kuberl" && cp "$repo"/kuberl/*.py "$pkg/kuberl/"
  for d in api worker operator; do ln -s "$repo/$d" "$pkg/kuberl/$d"; done
  for d in "$repo"/kuberl/*/; do ln -s "$d" "$pkg/kuberl/$(basename "$d")"; done
fi
python3 -c "import pytest_asyncio" 2>/dev/null || {
  whl=$(ls "$repo"/.whl/pytest_asyncio-*.whl 2>/dev/null | head -1)
  [ -n "$whl" ] && python3 -m pip install -q --no-deps --no-index --target "$extra" "$whl"
}
smg_whl=$(ls "$repo"/.whl/smg-*.whl 2>/dev/null | head -1)
if [ -n "$smg_whl" ] && [ ! -x "$extra/bin/smg" ]; then
  python3 -m pip install -q --no-deps --no-index --target "$extra" "$smg_whl" && echo "smg installed from $smg_whl"
fi
export PATH="$extra/bin:$PATH"

# the model: a random-init Qwen2 (hidden 256, head_dim 64, 4 layers) with kuberl's tiny BPE tokenizer, bf16-safe
PYTHONPATH="$pkg:$extra" python3 -c "
from kuberl.worker.tiny_model import build_tiny_model
print(build_tiny_model('$model', 'qwen2', seed=0, max_position_embeddings=4096, hidden_size=256, num_layers=4))
" || { echo "could not build the model"; exit 1; }

up() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$1/health', timeout=2)" 2>/dev/null; }
if up 30000 && up 30001; then
  echo "reusing the SGLang servers on :30000 and :30001"
  site_path=/tmp/sglang-site
else
  t0=$(date +%s)
  bash "$repo/.gpu-sglang/start-servers.sh" "$model" 30000 30001 -- --random-seed 0 --enable-metrics \
    | tee "$out/start-servers.log"
  echo "servers up after $(( $(date +%s) - t0 )) s"
  site_path=/tmp/sglang-site
fi
cp /tmp/sglang-30000.log /tmp/sglang-30001.log "$out/" 2>/dev/null || true

cd "$repo"
PYTHONPATH="$pkg:$extra:$site_path" \
KUBERL_SGLANG_URL=http://127.0.0.1:30000 KUBERL_SGLANG_URL_2=http://127.0.0.1:30001 \
KUBERL_SGLANG_MODEL_PATH=$model \
  timeout 420 python3 -m pytest tests/worker/rollout/test_protocol.py -v -rA -p no:cacheprovider \
    --junitxml="$out/protocol-junit.xml" 2>&1 | tee "$out/protocol.log"
rc=${PIPESTATUS[0]}
echo "=== protocol suite against real SGLang 0.5.14: exit $rc ==="
grep -E "passed|failed|skipped|error" "$out/protocol.log" | tail -1
exit "$rc"
