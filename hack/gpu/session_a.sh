#!/usr/bin/env bash
# GPU call A of a two-call hold on nvidia-h200-x2 (carry: .gpu-sglang .whl/base .whl/megatron):
#   - unpacks the SGLang site in the background for call B (hack/gpu/session_b.sh);
#   - bench/trainer_bench.py on one GPU: torch backend with varlen attention, with SDPA block-masked rows, and
#     right-padded; Megatron TP1; plain HF (Qwen2.5-1.5B shape, 32 768 tokens per step);
#   - the suite's CUDA tests: varlen kernel and backend parity, the loss kernels, the 2-GPU torch DP check;
#   - the Megatron checks (TP1, TP2, DP2) in the time left.
# Logs in $OUT: call_a.log, bench1.log, cuda-tests.log, megatron-checks.log.
set -uo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/kuberl-gpu-out}; mkdir -p "$OUT"; ROOT=$(pwd)
exec > >(tee -a "$OUT/call_a.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
( mkdir -p /tmp/sglang-site && python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall('/tmp/sglang-site')" \
    .gpu-sglang/site.tar.xz && touch /tmp/sglang-site/.done ) > /tmp/site-unpack.log 2>&1 &
rm -rf /tmp/kuberl-path && mkdir -p /tmp/kuberl-path/kuberl
for f in "$ROOT"/kuberl/*; do ln -s "$f" /tmp/kuberl-path/kuberl/; done
for d in api operator worker; do ln -s "$ROOT/$d" "/tmp/kuberl-path/kuberl/$d"; done
for g in base megatron; do
  python3 hack/gpu/unpack_wheels.py /tmp/kuberl-wheels ".whl/$g" && touch "/tmp/kuberl-wheels/.done-$g"
done
export PYTHONPATH=/tmp/kuberl-path:/tmp/kuberl-wheels
nvidia-smi --query-gpu=name,memory.used,memory.total,utilization.gpu --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
stamp "trainer bench, 1 GPU"
(cd /tmp && timeout 240 python3 "$ROOT/bench/trainer_bench.py" --steps 3) > "$OUT/bench1.log" 2>&1
echo "trainer bench exit $?"; grep -E "^(FLOPs|BENCH|torch)" "$OUT/bench1.log" || tail -30 "$OUT/bench1.log"
stamp "CUDA tests of the suite"
timeout 200 python3 -m pytest tests/gpu/test_varlen_attention_gpu.py tests/worker/algo/test_losses.py \
  tests/gpu/test_torch_dp_gpu.py -o pythonpath=/tmp/kuberl-path -p no:cacheprovider -q -rs -s \
  > "$OUT/cuda-tests.log" 2>&1
echo "CUDA tests exit $?"; grep -E "passed|failed|error|SKIPPED|FAILED|flash varlen|relative error|logprobs \|diff" "$OUT/cuda-tests.log" | tail -25
stamp "Megatron checks (time left)"
left=$(( 575 - ($(date +%s) - t0) ))
if [ "$left" -gt 60 ]; then
  BUDGET=$left SKIP_BENCH=1 OUT=/tmp/mgout PYTHONPATH= bash tests/gpu/run_megatron_gpu.sh
  cat /tmp/mgout/tp1.log /tmp/mgout/tp2.log /tmp/mgout/dp2.log > "$OUT/megatron-checks.log" 2>/dev/null
else echo "no time left for the Megatron checks"; fi
ls /tmp/sglang-site/.done && echo "sglang site unpacked"
stamp "done"
