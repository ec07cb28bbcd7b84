#!/usr/bin/env bash
# The reference workload's throughput run on the device machine (issue 17): bench/reference_run.py through the
# real driver on a local Ray. Called by hack/gpu/reference_8gpu.sh and reference_2gpu.sh (they set SCALE);
# two calls of ONE hold, because the 64 MiB carry limit cannot take the 45 MB SGLang site and the 30 MB ray
# wheels together (hack/gpu/README.md):
#   call 1  PHASE=prepare  carry: .gpu-sglang .whl/megatron   (~48 MiB + the ~2 MB tree)
#           unpacks the SGLang site and megatron-core under /tmp, checks the imports, prints the dry-run plan;
#   call 2  PHASE=run      carry: .whl/ray                    (~30 MiB + the tree)
#           unpacks ray (env.sh), runs the bench (ROLLOUTS rollouts) and leaves reference_run.json, the engine logs and
#           metrics.jsonl in $OUT. The JSON is rewritten after every rollout, so a timeout keeps what ran.
# Knobs: ROLLOUTS (2), TRAINER (megatron|torch), MAX_RESPONSE_LEN (unset: the manifest's 8192; a labelled
# deviation), EXTRA (more bench flags, e.g. --no-cuda-graph), BENCH_TIMEOUT (seconds, 560).
set -uo pipefail
SCALE=${SCALE:?set by reference_8gpu.sh / reference_2gpu.sh}
PHASE=${1:-${PHASE:-run}}
source hack/gpu/env.sh
exec > >(tee -a "$OUT/reference-$SCALE-$PHASE.log") 2>&1
t0=$(date +%s); stamp() { echo "=== [$(( $(date +%s) - t0 )) s] $*"; }
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv
flags=(--scale "$SCALE" --rollouts "${ROLLOUTS:-2}" --trainer "${TRAINER:-megatron}" --cp-fallback)
[ -n "${MAX_RESPONSE_LEN:-}" ] && flags+=(--max-response-len "$MAX_RESPONSE_LEN")
case "$PHASE" in
  prepare)
    stamp "imports"
    (cd /tmp && python3 -c "import sglang, megatron.core, kuberl.worker.driver; print('sglang', sglang.__version__)") \
      2>&1 | grep -v Warning | tail -3
    python3 -c "import transformer_engine.pytorch" 2>/dev/null && echo "Transformer Engine: yes" \
      || echo "Transformer Engine: no (the Megatron backend runs sequence parallel off)"
    stamp "plan"
    (cd /tmp && python3 "$ROOT/bench/reference_run.py" "${flags[@]}" --dry-run) ;;
  run)
    stamp "reference run ($SCALE)"
    # from /tmp: Ray workers put the cwd first on sys.path, and the repo's kuberl/ would shadow the mapped package
    (cd /tmp && timeout "${BENCH_TIMEOUT:-560}" python3 "$ROOT/bench/reference_run.py" "${flags[@]}" \
      --workdir /tmp/reference-work --out-dir "$OUT" ${EXTRA:-})
    echo "reference_run exit code: $?"
    cp /tmp/reference-work/run/engine-*.log /tmp/reference-work/run/metrics.jsonl "$OUT/" 2>/dev/null
    nvidia-smi --query-gpu=index,memory.used,memory.total --format=csv ;;
  *) echo "PHASE must be prepare or run"; exit 2 ;;
esac
stamp "done"
