#!/usr/bin/env bash
# One GPU call for the end of a session with little device time (carry: .gpu-sglang .whl/base .whl/megatron):
# the Megatron checks (TP1/TP2/DP2, no trainer bench) run beside two real SGLang servers and the protocol
# suite; hack/gpu/call2.sh follows in the same hold (router test + GRPO loop). Logs: $OUT (≤ 8 files).
set -uo pipefail
source hack/gpu/env.sh
exec > >(tee -a "$OUT/final_a.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
python3 -c "import pytest_asyncio" 2>/dev/null || python3 hack/gpu/unpack_wheels.py /tmp/kuberl-wheels .whl/base
(OUT=/tmp/mgout SKIP_BENCH=1 PYTHONPATH= bash tests/gpu/run_megatron_gpu.sh > /tmp/mg-summary.log 2>&1) &
mg=$!
python3 hack/gpu/make_model.py /tmp/m-small --hidden 256 --layers 4 --max-position 2048
stamp "starting servers"
bash .gpu-sglang/start-servers.sh /tmp/m-small 30000 30001 -- --random-seed 0 --enable-metrics \
  --enable-deterministic-inference
stamp "protocol suite (router test in call 2)"
KUBERL_SGLANG_URL=http://127.0.0.1:30000 KUBERL_SGLANG_URL_2=http://127.0.0.1:30001 \
KUBERL_SGLANG_MODEL_PATH=/tmp/m-small \
  timeout 240 python3 -m pytest tests/worker/rollout/test_protocol.py -o pythonpath=/tmp/kuberl-path \
  -p no:cacheprovider -q -ra 2>&1 | tee "$OUT/protocol.log" | tail -25
stamp "waiting for the Megatron checks"
wait $mg; cat /tmp/mg-summary.log
cat /tmp/mgout/tp1.log /tmp/mgout/tp2.log /tmp/mgout/dp2.log > "$OUT/megatron-checks.log" 2>/dev/null
stamp "done"
