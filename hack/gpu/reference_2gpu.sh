#!/usr/bin/env bash
# The same run at 2 GPUs (kind nvidia-h200-x2): Qwen2.5-1.5B shape, random weights, trainer on GPU 0
# (Megatron TP 1; TRAINER=torch for the torch backend), one SGLang engine on GPU 1; the seed's batch
# (32 x 8 samples, 8192 tokens, 4608 tokens/GPU). Two calls, ONE hold:
#   run(kind=nvidia-h200-x2, carry=[".gpu-sglang", ".whl/megatron"], command="bash hack/gpu/reference_2gpu.sh prepare")
#   run(carry=[".whl/ray"], command="bash hack/gpu/reference_2gpu.sh run")
# Knobs and outputs: hack/gpu/reference.sh.
SCALE=2gpu exec bash hack/gpu/reference.sh "$@"
