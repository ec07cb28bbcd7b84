#!/usr/bin/env bash
# GPU call 1 (carry: .gpu-sglang .whl/base): real SGLang 0.5.14, the protocol suite, the throughput bench.
#   - unpacks the SGLang site, writes a random-init Qwen2 (hidden 256 x 4 layers, BPE tokenizer, bf16)
#     and a config-only Qwen2.5-1.5B shape;
#   - starts two servers on the small model (:30000, :30001), then one dummy-weight 1.5B server (:30002);
#   - runs tests/worker/rollout/test_protocol.py against :30000/:30001 (router test skipped: call 2);
#   - runs bench/rollout_throughput_bench.py against :30002 (256 x 128-token prompts + 1024 tokens),
#     then stops :30002. The two small servers stay up for call 2 (same hold).
# Everything is teed into $OUT (call1.log, protocol.log, throughput.json, sglang-*.log).
#     bash hack/gpu/call1.sh
set -uo pipefail
source hack/gpu/env.sh
exec > >(tee -a "$OUT/call1.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
python3 -c "import pytest_asyncio" 2>/dev/null || python3 hack/gpu/unpack_wheels.py /tmp/kuberl-wheels .whl/base
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
stamp "models"
python3 hack/gpu/make_model.py /tmp/m-small --hidden 256 --layers 4 --max-position 2048
python3 hack/gpu/make_model.py /tmp/m-1p5b --config-only
stamp "starting servers"
SMALL_FLAGS=${SMALL_FLAGS:---random-seed 0 --enable-metrics --enable-deterministic-inference}
bash .gpu-sglang/start-servers.sh /tmp/m-small 30000 30001 -- $SMALL_FLAGS
# SGLang sizes its KV pool from the memory free when it starts, so the 1.5B server starts only after the
# small ones hold theirs (two servers racing can both count the same free memory); it warms up while
# the protocol suite runs. The later flag wins over start-servers.sh's --mem-fraction-static 0.25.
bash .gpu-sglang/start-servers.sh /tmp/m-1p5b 30002 -- --load-format dummy --skip-tokenizer-init \
  --random-seed 0 --enable-metrics --mem-fraction-static 0.5 > "$OUT/start-1p5b.log" 2>&1 &
big=$!
stamp "protocol suite (KUBERL_LOGPROB_TOL=${LOGPROB_TOL:-0.2}, bf16)"
KUBERL_SGLANG_URL=http://127.0.0.1:30000 KUBERL_SGLANG_URL_2=http://127.0.0.1:30001 \
KUBERL_SGLANG_MODEL_PATH=/tmp/m-small KUBERL_LOGPROB_TOL=${LOGPROB_TOL:-0.2} \
  timeout 240 python3 -m pytest tests/worker/rollout/test_protocol.py -p no:cacheprovider -q -ra \
  2>&1 | tee "$OUT/protocol.log" | tail -40
wait $big; grep -v "^export" "$OUT/start-1p5b.log"
stamp "throughput bench on :30002 (Qwen2.5-1.5B shape, dummy weights)"
timeout 300 python3 bench/rollout_throughput_bench.py --url http://127.0.0.1:30002 \
  --prompts 32 --group-size 8 --prompt-len 128 --max-new-tokens 1024 --json "$OUT/throughput.json"
python3 hack/gpu/stop-port.py 30002
cp /tmp/sglang-3000*.log "$OUT/" 2>/dev/null; nvidia-smi --query-gpu=memory.used,memory.total --format=csv
stamp "done"
