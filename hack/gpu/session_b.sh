#!/usr/bin/env bash
# GPU call B, same hold as hack/gpu/session_a.sh (carry: .whl/router .whl/ray; the SGLang site unpacked by call A):
#   - two real SGLang 0.5.14 servers on a random-init Qwen2; the protocol suite and the smg router test against
#     them (the aiohttp engine client, exact-rid and abort_all aborts), then the servers stop;
#   - bench/real_engine_grpo.py: the real driver (local Ray), one SGLang engine on GPU 1, the torch trainer on
#     GPU 0 (varlen attention), $ROLLOUTS rollouts in the time left.
# Logs in $OUT: call_b.log, protocol.log, real_engine_grpo.json, metrics.jsonl, engine-0.log.
set -uo pipefail
source hack/gpu/env.sh
exec > >(tee -a "$OUT/call_b.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
python3 hack/gpu/make_model.py /tmp/m-small --hidden 256 --layers 4 --max-position 2048
stamp "starting servers"
bash .gpu-sglang/start-servers.sh /tmp/m-small 30000 30001 -- --random-seed 0 --enable-metrics \
  --enable-deterministic-inference
stamp "protocol suite with the smg router test"
KUBERL_SGLANG_URL=http://127.0.0.1:30000 KUBERL_SGLANG_URL_2=http://127.0.0.1:30001 \
KUBERL_SGLANG_MODEL_PATH=/tmp/m-small \
  timeout 200 python3 -m pytest tests/worker/rollout/test_protocol.py -o pythonpath=/tmp/kuberl-path \
  -p no:cacheprovider -q -ra 2>&1 | tee "$OUT/protocol.log" | grep -E "passed|failed|FAILED|SKIPPED|Error" | tail -20
python3 hack/gpu/stop-port.py 30000; python3 hack/gpu/stop-port.py 30001
left=$(( 570 - ($(date +%s) - t0) ))
stamp "GRPO loop with a real engine (${ROLLOUTS:-12} rollouts, ${left} s left)"
(cd /tmp && timeout "$left" python3 "$ROOT"/bench/real_engine_grpo.py --engine sglang --rollouts ${ROLLOUTS:-12} \
  --base-gpu-id 1 --workdir /tmp/grpo-bench --out-dir "$OUT")
echo "real_engine_grpo exit code: $?"
cp /tmp/grpo-bench/run/engine-0.log /tmp/grpo-bench/run/metrics.jsonl "$OUT/" 2>/dev/null
stamp "done"
