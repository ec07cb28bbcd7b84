"""Trainer throughput: tokens/s and MFU per GPU of one GRPO train step, torch backend vs Megatron vs HF.

Shape: Qwen2.5-1.5B (random init, bf16), 32 768 real tokens per step (lengths log-normal, median 1k,
capped at 4k, seed 0), packing budget 8192 tokens per micro-batch. Run under torchrun:

    torchrun --nproc_per_node=1 bench/trainer_bench.py            # torch backend, megatron TP1, HF padded
    torchrun --nproc_per_node=2 bench/trainer_bench.py            # megatron DP2 and TP2
    add --tiny for a seconds-long smoke run of the same code on a toy shape (CPU ok for torch/hf)

FLOPs per step (forward + backward = 3 x forward, no recompute counted; causal attention halves QK^T/AV):
    6 * N * T  +  6 * L * d_attn * sum_i(s_i^2)
N = non-embedding parameters + the LM head (V x h), T = real tokens, L = layers, d_attn = heads x head_dim,
s_i = sample lengths. MFU = FLOPs / step time / (GPUs x 989.4e12) (H200 dense bf16 peak).
Per-GPU figures divide by the world size; scaling efficiency = (tokens/s on 2 GPUs) / (2 x 1-GPU
tokens/s of the same backend), read from the two runs' JSON lines.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

PEAK = 989.4e12
ALGO = {"advantage_estimator": "grpo", "eps_clip": 0.2, "eps_clip_high": 0.28, "use_kl_loss": False,
        "kl_loss_coef": 0.0, "entropy_coef": 0.0, "calculate_per_token_loss": False}
ADAM = {"type": "adam", "lr": 1e-6, "min_lr": 0.0, "weight_decay": 0.0, "adam_beta1": 0.9,
        "adam_beta2": 0.98, "adam_eps": 1e-8, "clip_grad": 1.0, "lr_decay_style": "constant"}
SHAPE_1P5B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  tie_word_embeddings=True)
SHAPE_TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=True)


def lengths(total: int, cap: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    out: list[int] = []
    while sum(out) < total:
        out.append(min(cap, max(16, int(rng.lognormvariate(math.log(cap / 4), 0.6)))))
    out[-1] -= sum(out) - total
    if out[-1] < 16:
        out.pop()
    return out


def samples(lens: list[int], vocab: int):
    from kuberl.worker.train.batch import TrainSample

    rng = random.Random(1)
    out = []
    for n in lens:
        p = max(1, n // 4)
        out.append(TrainSample(tokens=[rng.randrange(vocab) for _ in range(n)], prompt_len=p,
                               advantages=[rng.uniform(-1, 1)] * (n - p), loss_mask=[1] * (n - p)))
    return out


def step_flops(cfg, lens: list[int]) -> float:
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    hd = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    per_layer = h * (h + 2 * kv) + h * h + 3 * h * cfg.intermediate_size
    n = L * per_layer + cfg.vocab_size * h
    attn = 6 * L * cfg.num_attention_heads * hd * sum(s * s for s in lens)
    return 6 * n * sum(lens) + attn


def hf_padded_step(model, opt, data, budget: int, device) -> None:
    """Plain HF: same micro-batches as the packer, right-padded to their longest, mean token loss."""
    from kuberl.worker.algo.packing import pack_micro_batches

    opt.zero_grad(set_to_none=True)
    for mb in pack_micro_batches([s.num_tokens for s in data], budget):
        T = max(data[i].num_tokens for i in mb)
        ids = torch.zeros(len(mb), T, dtype=torch.long)
        mask = torch.zeros(len(mb), T, dtype=torch.long)
        for j, i in enumerate(mb):
            ids[j, : data[i].num_tokens] = torch.tensor(data[i].tokens)
            mask[j, : data[i].num_tokens] = 1
        ids, mask = ids.to(device), mask.to(device)
        out = model(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
        out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def timed(fn, steps: int, device) -> float:
    fn()  # warm-up (allocator, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma list of: torch,megatron,hf,megatron_tp")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if "RANK" in os.environ:
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = SHAPE_TINY if args.tiny else SHAPE_1P5B
    total, budget, cap = (2048, 512, 256) if args.tiny else (32768, 8192, 4096)
    root = Path(tempfile.gettempdir()) / ("kuberl-bench-tiny" if args.tiny else "kuberl-bench-1p5b")
    cfg = Qwen2Config(**shape)
    if rank == 0 and not (root / "config.json").exists():
        torch.manual_seed(0)
        Qwen2ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(root)
    if dist.is_initialized():
        dist.barrier()
    lens = lengths(total, cap)
    data = samples(lens, cfg.vocab_size)
    flops = step_flops(cfg, lens)
    if rank == 0:
        print(f"FLOPs/step = 6*N*T + 6*L*d_attn*sum(s^2) = {flops:.4g} (T={sum(lens)}, {len(lens)} samples, "
              f"budget {budget}); MFU = FLOPs/time/(GPUs*{PEAK:.4g})", flush=True)
    wanted = set(filter(None, args.only.split(","))) or (
        {"torch", "megatron", "hf"} if world == 1 else {"megatron", "megatron_tp"})
    rows = []

    def report(name: str, sec: float) -> None:
        tps = sum(lens) / sec
        row = {"backend": name, "gpus": world, "step_s": round(sec, 3), "tokens_per_s": round(tps),
               "tokens_per_s_per_gpu": round(tps / world),
               "mfu_per_gpu": round(flops / sec / (world * PEAK), 4) if cuda else None}
        rows.append(row)
        if rank == 0:
            print("BENCH " + json.dumps(row), flush=True)

    if "torch" in wanted and world == 1:
        from kuberl.worker.algo.losses import LossConfig
        from kuberl.worker.levers import Levers
        from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

        # torch: the backend as configured by default (varlen attention over one packed row on CUDA);
        # torch_sdpa_rows: packed rows as wide as the longest sample, block masks through SDPA;
        # torch_padded: one right-padded row per sample (the backend before packing).
        variants = (("torch", Levers()), ("torch_sdpa_rows", Levers(varlen_attention=False)),
                    ("torch_padded", Levers(packed_sequences=False)))
        for name, levers in variants:
            os.environ["KUBERL_DISABLE_LEVERS"] = ",".join(levers.disabled())  # read by the backend
            tb = TorchBackend(TorchBackendConfig(
                hf_checkpoint=str(root), loss=LossConfig.from_algorithm(ALGO), optimizer=ADAM,
                use_dynamic_batch_size=True, max_tokens_per_gpu=budget, device=device.type))
            if rank == 0:
                print(f"{name}: attention {tb.model.config._attn_implementation}, levers off: "
                      f"{levers.disabled() or 'none'}", flush=True)
            report(name, timed(lambda tb=tb: tb.train_step(data), args.steps, device))
            del tb
            os.environ.pop("KUBERL_DISABLE_LEVERS")
            gc.collect()  # the backend's model, optimizer state and graphs, before the next one loads
            if cuda:
                torch.cuda.empty_cache()
    if "hf" in wanted and world == 1:
        model = AutoModelForCausalLM.from_pretrained(root, dtype=torch.bfloat16).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        report("hf_padded", timed(lambda: hf_padded_step(model, opt, data, budget, device), args.steps, device))
        del model, opt
    for name, tp in (("megatron", 1), ("megatron_tp", world)):
        if name not in wanted or not cuda or (name == "megatron_tp" and world == 1):
            continue
        from kuberl.worker.algo.losses import LossConfig
        from kuberl.worker.train.megatron_backend import MegatronBackend, MegatronBackendConfig
        from kuberl.worker.train.megatron_model import release_parallel

        mb = MegatronBackend(MegatronBackendConfig(
            hf_checkpoint=str(root), loss=LossConfig.from_algorithm(ALGO), optimizer=ADAM, use_dynamic_batch_size=True,
            max_tokens_per_gpu=budget, tensor_model_parallel_size=tp, dtype="bfloat16"))
        label = f"megatron_{'TE' if mb.use_te else 'local'}_tp{tp}_dp{world // tp}"
        report(label, timed(lambda mb=mb: mb.train_step(data), args.steps, device))
        del mb
        gc.collect()
        torch.cuda.empty_cache()
        release_parallel(default_group=False)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
