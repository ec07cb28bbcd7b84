#!/usr/bin/env bash
# Device-machine entry point for the data-parallel torch backend check (2 GPUs, NCCL): makes kuberl
# importable without installing it and runs tests/gpu/test_torch_dp_gpu.py from outside the repository
# root (its operator/ folder shadows the standard library). Logs under $OUT. Usage, from the repo root:
#   bash tests/gpu/run_torch_dp_gpu.sh
set -uo pipefail
REPO="$(cd "$(dirname "$0")/../.." && pwd)"
OUT="${OUT:-/tmp/torch-dp-gpu-out}"; mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p /tmp/kpkg-dp && rm -rf /tmp/kpkg-dp/kuberl && cp -r "$REPO/kuberl" /tmp/kpkg-dp/kuberl
ln -sfn "$REPO/worker" /tmp/kpkg-dp/kuberl/worker; ln -sfn "$REPO/api" /tmp/kpkg-dp/kuberl/api
export PYTHONPATH=/tmp/kpkg-dp${PYTHONPATH:+:$PYTHONPATH}
cd /tmp
timeout 540 python -m pytest "$REPO/tests/gpu/test_torch_dp_gpu.py" -c /dev/null --rootdir /tmp \
  --import-mode=importlib -p no:cacheprovider -q -s 2>&1 | tee "$OUT/torch_dp_gpu.log" | \
  grep -E "rank |float(32|64):|passed|failed|skipped|Error" 
exit "${PIPESTATUS[0]}"
