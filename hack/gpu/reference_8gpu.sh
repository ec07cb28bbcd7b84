#!/usr/bin/env bash
# The reference workload on one 8-GPU host (kind nvidia-h200-x8): GLM4-9B shape, random weights, 4 trainer
# GPUs (Megatron TP 2 x CP 2 + SP; CP 1 = TP 2 x DP 2 while the backend refuses CP > 1, labelled in the
# output), 2 SGLang engines x TP 2, 32 x 8 samples of up to 8192 tokens, 4608 tokens/GPU. Two calls, ONE hold:
#   run(kind=nvidia-h200-x8, carry=[".gpu-sglang", ".whl/megatron"], command="bash hack/gpu/reference_8gpu.sh prepare")
#   run(carry=[".whl/ray"], command="bash hack/gpu/reference_8gpu.sh run")
# (carry limit 64 MiB: the 45 MB SGLang site and the 30 MB ray wheels cannot travel together; call 2 relies on
# what call 1 unpacked under /tmp.) Knobs and outputs: hack/gpu/reference.sh.
SCALE=8gpu exec bash hack/gpu/reference.sh "$@"
