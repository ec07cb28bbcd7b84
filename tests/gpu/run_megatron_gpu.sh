#!/usr/bin/env bash
# Device-machine entry point for the Megatron backend's GPU checks (see megatron_checks.py for the
# checks and their tolerances) and bench/trainer_bench.py on 1 and 2 GPUs. Needs the megatron-core
# wheel under .whl/megatron/ (carry it) and
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
left() { local t=$(( ${BUDGET:-520} - SECONDS )); [ "$t" -lt "$1" ] && echo "$t" || echo "$1"; }  # run < 9 min
run() {  # name procs tp
  timeout "$(left 200)" python -m torch.distributed.run --nproc_per_node="$2" "$REPO/tests/gpu/megatron_checks.py" \
    --tp "$3" --out "/tmp/mg-$1" > "$OUT/$1.log" 2>&1 || status=1
  grep -E '^(PASS|FAIL|==|\{)' "$OUT/$1.log" || tail -30 "$OUT/$1.log"
}
run tp1 1 1
if [ "$ngpu" -ge 2 ]; then run tp2 2 2; run dp2 2 1; else echo "only $ngpu GPU: TP2/DP2 skipped"; fi
bench() {  # name procs
  local t; t=$(left 240); [ "$t" -gt 30 ] || { echo "no time left for $1"; return; }
  timeout "$t" python -m torch.distributed.run --nproc_per_node="$2" "$REPO/bench/trainer_bench.py" \
    > "$OUT/$1.log" 2>&1 || echo "$1 exited non-zero (see $OUT/$1.log)"
}
if [ "${SKIP_BENCH:-0}" = 1 ]; then echo "SKIP_BENCH=1: trainer bench not run"; else
  bench bench1 1
  if [ "$ngpu" -ge 2 ]; then bench bench2 2; fi
fi
echo "================ summary (logs: $OUT/{tp1,tp2,dp2}.log)"
for f in "$OUT"/tp1.log "$OUT"/tp2.log "$OUT"/dp2.log; do
  [ -f "$f" ] || continue
  printf '%-8s PASS %2d  FAIL %2d\n' "$(basename "$f" .log)" "$(grep -c '^PASS' "$f")" "$(grep -c '^FAIL' "$f")"
  grep -E '^FAIL' "$f" | cut -c1-200
done
grep -h '^PASS GRPO\|^FAIL GRPO' "$OUT"/*.log
grep -h '^FLOPs' "$OUT"/bench1.log 2>/dev/null | head -1
python - "$OUT" <<'PY'
import json, pathlib, sys
rows = [json.loads(l[6:]) for f in sorted(pathlib.Path(sys.argv[1]).glob("bench*.log"))
        for l in f.read_text().splitlines() if l.startswith("BENCH ")]
one = {r["backend"].rsplit("_tp", 1)[0]: r["tokens_per_s"] for r in rows if r["gpus"] == 1}
for r in rows:
    base = one.get(r["backend"].rsplit("_tp", 1)[0])
    eff = f"{r['tokens_per_s'] / (r['gpus'] * base):.1%}" if r["gpus"] > 1 and base else "-"
    print(f"{r['backend']:<28} gpus {r['gpus']}  tok/s {r['tokens_per_s']:>7}  tok/s/gpu "
          f"{r['tokens_per_s_per_gpu']:>7}  MFU/gpu {r['mfu_per_gpu']:.1%}  scaling {eff}")
PY
echo "megatron GPU checks exit status: $status"
exit $status
