"""Data-parallel torch backend on GPUs (NCCL), run under torchrun by test_torch_dp_gpu.py.

Each rank builds a ``TrainerActor`` (the production rank plumbing: it joins the NCCL group before building
the backend), computes logprobs, takes one SGD step (lr 1, no clipping: weights after = w - g) and rank 0
writes the metrics, logprobs and weights under ``--out``. The wrapper compares a 1-process run with a
2-process run. Tolerances, fixed before running: float64 <= 1e-6 (the issue's bound); float32 with TF32 off
<= 2e-5 (batch composition changes kernel reduction order).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import torch

from kuberl.worker.algo.losses import LossConfig

# The CPU test's samples and settings, loaded by path: the repository root must not go on sys.path (its
# operator/ folder would shadow the standard library).
_spec = importlib.util.spec_from_file_location(
    "trainer_group_cases", Path(__file__).resolve().parents[1] / "worker/train/test_trainer_group.py"
)
assert _spec is not None and _spec.loader is not None
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--dtype", default="float64")
    parser.add_argument("--device", default="cuda")  # cpu: the same check over gloo
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    from safetensors.torch import save_file

    from kuberl.worker.train.torch_backend import TorchBackendConfig
    from kuberl.worker.train.trainer_actor import TrainerActor

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    config = TorchBackendConfig(hf_checkpoint=str(args.model), loss=LossConfig.from_algorithm(cases.ALGO), optimizer=cases.SGD, device=args.device,
                                dtype=args.dtype, use_dynamic_batch_size=True, max_tokens_per_gpu=16)
    actor = TrainerActor("torch", config, rank, world, os.environ["MASTER_ADDR"],
                         int(os.environ["MASTER_PORT"]) + 1)  # torchrun's own store holds MASTER_PORT
    samples = cases.step_samples(0) * 3  # 21 samples: several micro-batches per rank
    logprobs = actor.backend.compute_logprobs(samples)
    metrics = actor.train_step(cases.with_old(samples, logprobs))
    digest = actor.weights_digest()
    digests: list[str | None] = [None] * world
    if world > 1:
        torch.distributed.all_gather_object(digests, digest)
    else:
        digests = [digest]
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(
            {"metrics": metrics, "logprobs": logprobs, "replicas_agree": len(set(digests)) == 1}))
        save_file({n: t.detach().cpu().contiguous() for n, t in actor.backend.named_weights()},
                  str(args.out / "weights.safetensors"))
    print(f"rank {rank}/{world} {args.dtype}: loss {metrics['train/loss']:.12g} "
          f"grad_norm {metrics['train/grad_norm']:.12g}", flush=True)


if __name__ == "__main__":
    main()
