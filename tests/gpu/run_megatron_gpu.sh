#!/usr/bin/env bash
# Device-machine entry point for the Megatron backend's GPU checks (see megatron_checks.py for the
# checks and their tolerances). Needs the megatron-core wheel under .whl/megatron/ (carry it) and
# writes logs under $OUT. Usage, from the repository root:  bash tests/gpu/run_megatron_gpu.sh
set -uo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-/tmp/megatron-gpu-out}"; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# megatron-core (pure Python; its deps torch/numpy/packaging are on the machine) into /tmp/site, and
# kuberl as a package tree without installing (api/ and worker/ become kuberl.api, kuberl.worker).
mkdir -p /tmp/site /tmp/kpkg
for w in "$REPO"/.whl/megatron/*.whl; do python -m zipfile -e "$w" /tmp/site; done
rm -rf /tmp/kpkg/kuberl && cp -r "$REPO/kuberl" /tmp/kpkg/kuberl
ln -sfn "$REPO/worker" /tmp/kpkg/kuberl/worker; ln -sfn "$REPO/api" /tmp/kpkg/kuberl/api
export PYTHONPATH=/tmp/kpkg:/tmp/site
cd /tmp  # never the repository root: its operator/ folder shadows the standard library
python -c "import megatron.core, kuberl.worker.train.megatron_backend; print('imports ok')" 2>&1 | tail -1
ngpu=$(python -c "import torch; print(torch.cuda.device_count())")
status=0
run() {  # name procs tp
  timeout 280 python -m torch.distributed.run --nproc_per_node="$2" "$REPO/tests/gpu/megatron_checks.py" \
    --tp "$3" --out "/tmp/mg-$1" > "$OUT/$1.log" 2>&1 || status=1
  grep -E '^(PASS|FAIL|==|\{)' "$OUT/$1.log" || tail -30 "$OUT/$1.log"
}
run tp1 1 1
if [ "$ngpu" -ge 2 ]; then run tp2 2 2; run dp2 2 1; else echo "only $ngpu GPU: TP2/DP2 skipped"; fi
echo "================ summary (logs: $OUT/{tp1,tp2,dp2}.log)"
for f in "$OUT"/tp1.log "$OUT"/tp2.log "$OUT"/dp2.log; do
  [ -f "$f" ] || continue
  printf '%-8s PASS %2d  FAIL %2d\n' "$(basename "$f" .log)" "$(grep -c '^PASS' "$f")" "$(grep -c '^FAIL' "$f")"
  grep -E '^FAIL' "$f" | cut -c1-200
done
grep -h '^PASS GRPO\|^FAIL GRPO' "$OUT"/*.log
echo "megatron GPU checks exit status: $status"
exit $status
