#!/usr/bin/env bash
# GPU call (carry: .gpu-sglang; machine: nvidia-h200-x2): seconds per GB of the NCCL and CUDA-IPC weight sync
# against real SGLang 0.5.14, through kuberl's own sender (worker/weight_sync.py), each sync followed by the
# version check and a read-back of one parameter.
#   - a config-only Qwen2.5-1.5B shape (bf16, ~3.1 GB of weights), dummy-loaded by two servers:
#     :30010 on GPU 1 (NCCL: the trainer side runs on GPU 0) and :30011 on GPU 0 (IPC: same GPU);
#   - bench/weight_sync_bench.py on GPU 0, both transports, median of 3 after a warm-up.
# Everything is teed into $OUT (weight_sync.log, weight_sync.json, sglang-3001*.log).
#     bash hack/gpu/weight_sync.sh
set -uo pipefail
source hack/gpu/env.sh
exec > >(tee -a "$OUT/weight_sync.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv
python3 hack/gpu/make_model.py /tmp/m-1p5b --config-only
stamp "starting servers"
FLAGS="--load-format dummy --skip-tokenizer-init --random-seed 0 --mem-fraction-static 0.3"
CUDA_VISIBLE_DEVICES=1 bash .gpu-sglang/start-servers.sh /tmp/m-1p5b 30010 -- $FLAGS > "$OUT/start-30010.log" 2>&1 &
CUDA_VISIBLE_DEVICES=0 bash .gpu-sglang/start-servers.sh /tmp/m-1p5b 30011 -- $FLAGS > "$OUT/start-30011.log" 2>&1 &
wait; grep -v "^export" "$OUT"/start-3001*.log
stamp "bench (trainer side on GPU 0)"
CUDA_VISIBLE_DEVICES=0 timeout 400 python3 bench/weight_sync_bench.py --model-path /tmp/m-1p5b \
  --nccl-url http://127.0.0.1:30010 --ipc-url http://127.0.0.1:30011 --json "$OUT/weight_sync.json"
rc=$?
python3 hack/gpu/stop-port.py 30010; python3 hack/gpu/stop-port.py 30011
cp /tmp/sglang-3001*.log "$OUT/" 2>/dev/null
stamp "done (bench exit $rc)"
exit $rc
