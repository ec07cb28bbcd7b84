#!/usr/bin/env bash
# GPU call B1 of a hold (carry: .gpu-sglang .whl/base .whl/megatron); hack/gpu/call2.sh follows at once in the
# same hold (router test + GRPO loop with a real engine, on the servers and site this call leaves):
#   - the suite's CUDA tests (varlen kernel and backend parity, loss kernels, 2-GPU torch DP) and the Megatron
#     checks (TP1, TP2, DP2);
#   - then two real SGLang servers on a random-init Qwen2 and the protocol suite (the router test runs in
#     call 2). The servers start only after the GPU work: SGLang sizes its KV pool from the memory free at its
#     start, and a test holding GPU 0 then leaves it none ("Loaded weights leave no GPU memory for the KV cache").
# Logs in $OUT: call_b1.log, cuda-tests.log, megatron-checks.log, protocol.log.
set -uo pipefail
source hack/gpu/env.sh
exec > >(tee -a "$OUT/call_b1.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
python3 hack/gpu/make_model.py /tmp/m-small --hidden 256 --layers 4 --max-position 2048
stamp "CUDA tests of the suite"
timeout 200 python3 -m pytest tests/gpu/test_varlen_attention_gpu.py tests/worker/algo/test_losses.py \
  tests/gpu/test_torch_dp_gpu.py -o pythonpath=/tmp/kuberl-path -p no:cacheprovider -q -rs -s \
  > "$OUT/cuda-tests.log" 2>&1
echo "CUDA tests exit $?"
grep -E "passed|failed|SKIPPED|FAILED|flash varlen|relative error|logprobs \|diff|Error" "$OUT/cuda-tests.log" | tail -25
stamp "Megatron checks"
BUDGET=200 SKIP_BENCH=1 OUT=/tmp/mgout PYTHONPATH= bash tests/gpu/run_megatron_gpu.sh | tail -12
cat /tmp/mgout/tp1.log /tmp/mgout/tp2.log /tmp/mgout/dp2.log > "$OUT/megatron-checks.log" 2>/dev/null
stamp "starting the servers"
bash .gpu-sglang/start-servers.sh /tmp/m-small 30000 30001 -- --random-seed 0 --enable-metrics \
  --enable-deterministic-inference | grep -v "^export"
stamp "protocol suite (router test in call 2)"
KUBERL_SGLANG_URL=http://127.0.0.1:30000 KUBERL_SGLANG_URL_2=http://127.0.0.1:30001 \
KUBERL_SGLANG_MODEL_PATH=/tmp/m-small \
  timeout 180 python3 -m pytest tests/worker/rollout/test_protocol.py -o pythonpath=/tmp/kuberl-path \
  -p no:cacheprovider -q -ra 2>&1 | tee "$OUT/protocol.log" | grep -E "passed|failed|FAILED|SKIPPED|Error" | tail -25
stamp "done"
