# Sourced by the GPU-machine scripts (hack/gpu/call*.sh) from the repository root: makes kuberl, the SGLang
# site and the carried wheels importable, without pip or network. Idempotent: a second call of the same hold
# reuses what the first unpacked under /tmp.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
export OUT=${OUT:-/tmp/kuberl-gpu-out}; mkdir -p "$OUT"
ROOT=$(pwd)
if [ ! -f /tmp/sglang-site/.done ]; then
  [ -f .gpu-sglang/site.tar.xz ] || { echo "no .gpu-sglang/site.tar.xz: carry .gpu-sglang in the first call"; exit 2; }
  mkdir -p /tmp/sglang-site && python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall('/tmp/sglang-site')" \
    .gpu-sglang/site.tar.xz && touch /tmp/sglang-site/.done
fi
# kuberl's folders map onto the kuberl namespace (setup.py): kuberl/* plus api, operator, worker.
rm -rf /tmp/kuberl-path && mkdir -p /tmp/kuberl-path/kuberl
for f in "$ROOT"/kuberl/*; do ln -s "$f" /tmp/kuberl-path/kuberl/; done
for d in api operator worker; do ln -s "$ROOT/$d" "/tmp/kuberl-path/kuberl/$d"; done
# Wheels carried in .whl/<group>/ (hack/gpu/fetch-wheels.sh) unpack into /tmp/kuberl-wheels.
for group in .whl/*/; do
  [ -d "$group" ] || continue
  marker=/tmp/kuberl-wheels/.done-$(basename "$group")
  [ -f "$marker" ] || { python3 hack/gpu/unpack_wheels.py /tmp/kuberl-wheels "$group" && touch "$marker"; }
done
export PYTHONPATH=/tmp/kuberl-path:/tmp/kuberl-wheels:/tmp/sglang-site
export PATH=/tmp/kuberl-wheels/bin:$PATH
[ -d /usr/local/cuda/bin ] && export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} PATH=$PATH:/usr/local/cuda/bin
NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
echo "env: $NGPU GPU(s); PYTHONPATH=$PYTHONPATH"
