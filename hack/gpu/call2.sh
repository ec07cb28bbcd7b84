#!/usr/bin/env bash
# GPU call 2 of the same hold (carry: .whl/router .whl/ray; call 1's servers on :30000/:30001 still up):
#   - unpacks smg (router) and the stripped ray with its small deps (only those the machine lacks);
#   - runs the router test of tests/worker/rollout/test_protocol.py against the two servers, then stops them;
#   - runs bench/real_engine_grpo.py: the real driver (local Ray) with one real SGLang engine and the torch
#     trainer, 20 rollouts (engine on GPU 1 when there are two GPUs, else sharing GPU 0).
# Teed into $OUT (call2.log, router.log, real_engine_grpo.json, engine log).
#     bash hack/gpu/call2.sh
set -uo pipefail
source hack/gpu/env.sh
exec > >(tee -a "$OUT/call2.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
python3 hack/gpu/unpack_wheels.py /tmp/kuberl-wheels .whl/router
python3 hack/gpu/unpack_wheels.py --missing-only /tmp/kuberl-wheels .whl/ray
stamp "router test"
KUBERL_SGLANG_URL=http://127.0.0.1:30000 KUBERL_SGLANG_URL_2=http://127.0.0.1:30001 \
KUBERL_SGLANG_MODEL_PATH=/tmp/m-small KUBERL_LOGPROB_TOL=${LOGPROB_TOL:-0.2} \
  timeout 150 python3 -m pytest tests/worker/rollout/test_protocol.py -p no:cacheprovider -q -ra -k smg \
  2>&1 | tee "$OUT/router.log" | tail -30
python3 hack/gpu/stop-port.py 30000; python3 hack/gpu/stop-port.py 30001
stamp "GRPO loop with a real engine"
gpu=0; [ "$NGPU" -ge 2 ] && gpu=1
timeout 420 python3 bench/real_engine_grpo.py --engine sglang --rollouts ${ROLLOUTS:-20} \
  --base-gpu-id $gpu --workdir /tmp/grpo-bench --out-dir "$OUT"
echo "real_engine_grpo exit code: $?"
cp /tmp/grpo-bench/run/engine-0.log /tmp/grpo-bench/run/metrics.jsonl "$OUT/" 2>/dev/null
stamp "done"
