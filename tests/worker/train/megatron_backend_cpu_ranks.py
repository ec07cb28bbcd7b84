"""One rank of the real MegatronBackend on CPU (gloo, fp32): torch-backend parity, then save/load resume.

Launched by test_megatron_backend_cpu.py as WORLD processes
(``python megatron_backend_cpu_ranks.py RANK WORLD PORT ROOT TP``); rank 0 prints one ``RESULT`` JSON line.
megatron-core's CUDA-only calls are redirected by the backend itself (worker/train/megatron_cpu.py); no
patch lives here.

1. Parity (tiny Qwen2: QKV bias, GQA). Rank 0 first runs the torch backend alone (no process group: one
   replica, its own packing budget), then every rank builds the MegatronBackend at TP ``TP`` over the
   world (DP = WORLD / TP, another budget, so several micro-batches per rank) on the same checkpoint
   and samples. Reported: max |Δ| of the logprobs, |Δ| of the loss, max |Δ| of the gradients (DP 1) and
   of the weights after one ``train_step`` with SGD (lr 1: the weight difference is the gradient
   difference) and with AdamW (weight decay 0.1, clipping 0.01, lr 1e-4).
2. Resume (tiny GLM4: sandwich norms, partial rotary; AdamW). Step 1, save, step 2 = the uninterrupted
   run; then load -> step 2 in the same backend (after it moved on) and in a freshly built one that never
   stepped (a resume in a new process). Both with the optimizer
   saved and under ``save_optim=False`` (spec.checkpoint.noSaveOptim), where the reference is a fresh
   backend loading the same checkpoint: the result must not depend on what the backend did before.
"""

from __future__ import annotations

import datetime
import json
import math
import random
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

warnings.filterwarnings("ignore")

VOCAB = 300
ALGO = {"advantage_estimator": "grpo", "eps_clip": 0.2, "eps_clip_high": 0.28, "use_kl_loss": False,
        "kl_loss_coef": 0.0, "entropy_coef": 0.0, "calculate_per_token_loss": False}
SGD = {"type": "sgd", "lr": 1.0, "min_lr": 0.0, "weight_decay": 0.0, "adam_beta1": 0.9,
       "adam_beta2": 0.98, "adam_eps": 1e-8, "clip_grad": 0.0, "lr_decay_style": "constant"}
ADAMW = {**SGD, "type": "adam", "lr": 1e-4, "weight_decay": 0.1, "clip_grad": 0.01}
RESUME_ADAM = {**SGD, "type": "adam", "lr": 1e-3, "clip_grad": 1.0}


def tiny_hf(family: str, out: Path) -> None:
    """A random tiny model; norms and biases perturbed so a dropped or swapped one changes the logits."""
    from transformers import Glm4Config, Glm4ForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cfg_cls, model_cls = {"glm4": (Glm4Config, Glm4ForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(
        vocab_size=VOCAB, pad_token_id=0, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
        max_position_embeddings=256,
    ))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out)


def samples(n: int, seed: int) -> list[Any]:
    from kuberl.worker.train.batch import TrainSample

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, r = rng.randint(3, 30), rng.randint(2, 40)
        out.append(TrainSample(
            tokens=[rng.randrange(1, VOCAB) for _ in range(p + r)], prompt_len=p,
            advantages=[rng.uniform(-1, 1)] * r, loss_mask=[int(rng.random() > 0.1) for _ in range(r)],
        ))
    return out


def with_old_logprobs(data: list[Any], logprobs: list[list[float]]) -> None:
    """Old logprobs = current ones shifted a little per token, so ratios differ from 1 and some clip."""
    for s, lps in zip(data, logprobs, strict=True):
        s.old_logprobs = [lp + 0.3 * math.sin(7 * i + s.prompt_len) for i, lp in enumerate(lps)]


def torch_reference(hf: Path, data: list[Any]) -> dict[str, Any]:
    """The torch backend, one process, fp32 on CPU: logprobs, loss, grads and weights after one step."""
    from kuberl.worker.algo.losses import LossConfig
    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    out: dict[str, Any] = {}
    for label, opt in (("sgd", SGD), ("adamw", ADAMW)):
        tb = TorchBackend(TorchBackendConfig(
            hf_checkpoint=str(hf), loss=LossConfig.from_algorithm(ALGO), optimizer=opt, device="cpu",
            dtype="float32", use_dynamic_batch_size=True, max_tokens_per_gpu=700, temperature=0.8))
        if label == "sgd":
            out["logprobs"] = tb.compute_logprobs(data)
            with_old_logprobs(data, out["logprobs"])
        metrics = tb.train_step(data)
        out[label] = {
            "loss": metrics["train/loss"], "grad_norm": metrics["train/grad_norm"],
            "grads": {n: p.grad.detach().clone() for n, p in tb.model.named_parameters() if p.grad is not None},
            "weights": {n: p.detach().clone() for n, p in tb.model.named_parameters()},
        }
    out["old_logprobs"] = [s.old_logprobs for s in data]
    return out


def backend(hf: Path, tp: int, optimizer: dict, budget: int, **kw: Any) -> Any:
    from kuberl.worker.algo.losses import LossConfig
    from kuberl.worker.train.megatron_backend import MegatronBackend, MegatronBackendConfig

    return MegatronBackend(MegatronBackendConfig(
        hf_checkpoint=str(hf), loss=LossConfig.from_algorithm(ALGO), optimizer=optimizer, device="cpu",
        dtype="float32", use_dynamic_batch_size=True, max_tokens_per_gpu=budget,
        tensor_model_parallel_size=tp, temperature=0.8, use_transformer_engine=False, **kw))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b), (sorted(a)[:3], sorted(b)[:3])
    return max((a[n].float() - b[n].float()).abs().max().item() for n in a)


def parity(tp: int, root: Path) -> dict[str, Any]:
    hf = root / "hf_qwen2"
    ref = torch.load(root / "torch_ref.pt", weights_only=False)
    data = samples(24, seed=3)
    out: dict[str, Any] = {}
    mb = backend(hf, tp, SGD, budget=300)
    out["dp"] = mb.dp_size
    lp = mb.compute_logprobs(data)
    out["logprobs"] = max(abs(a - b) for x, y in zip(lp, ref["logprobs"], strict=True)
                          for a, b in zip(x, y, strict=True))
    for s, old in zip(data, ref["old_logprobs"], strict=True):
        s.old_logprobs = old
    metrics = mb.train_step(data)
    out["sgd_loss"] = abs(metrics["train/loss"] - ref["sgd"]["loss"])
    out["sgd_loss_value"] = ref["sgd"]["loss"]
    out["sgd_clipped"] = metrics["train/clip_fraction"]
    if mb.dp_size == 1:
        out["sgd_grads"] = max_diff(dict(mb.named_grads()), ref["sgd"]["grads"])
    out["sgd_weights"] = max_diff(dict(mb.named_weights()), ref["sgd"]["weights"])
    del mb
    mb = backend(hf, tp, ADAMW, budget=300)
    metrics = mb.train_step(data)
    out["adamw_loss"] = abs(metrics["train/loss"] - ref["adamw"]["loss"])
    out["adamw_grad_norm"] = abs(metrics["train/grad_norm"] - ref["adamw"]["grad_norm"])
    out["adamw_weights"] = max_diff(dict(mb.named_weights()), ref["adamw"]["weights"])
    del mb
    return out


def weights(mb: Any) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in mb.named_weights()}


def equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return sorted(a) == sorted(b) and all(torch.equal(a[n], b[n]) for n in a)


def resume(tp: int, root: Path, rank: int) -> dict[str, Any]:
    from kuberl.worker.train.megatron_backend import NO_OPTIMIZER_MARKER

    hf = root / "hf_glm4"
    d0, d1 = samples(16, seed=10), samples(16, seed=11)
    out: dict[str, Any] = {}
    for save_optim in (True, False):
        tag = "optim" if save_optim else "no_optim"
        ckpt = root / f"ckpt_{tag}_tp{tp}"
        mb = backend(hf, tp, RESUME_ADAM, budget=400, save_optim=save_optim)
        mb.train_step(d0)
        saved = weights(mb)
        mb.save(ckpt)
        uninterrupted = mb.train_step(d1)
        w_uninterrupted = weights(mb)
        mb.train_step(d0)  # moves on, so a load that restored nothing would show
        mb.load(ckpt)
        out[f"{tag}_marker"] = (ckpt / NO_OPTIMIZER_MARKER).exists()
        out[f"{tag}_load_restores_weights"] = equal(weights(mb), saved)
        again = mb.train_step(d1)
        w_again = weights(mb)
        del mb
        fresh = backend(hf, tp, RESUME_ADAM, budget=400, save_optim=save_optim)
        fresh.load(ckpt)  # never stepped: a resume in a new process
        first = fresh.train_step(d1)
        w_fresh = weights(fresh)
        del fresh
        out[f"{tag}_same_backend_vs_fresh_metrics"] = again == first
        out[f"{tag}_same_backend_vs_fresh_weights"] = equal(w_again, w_fresh)
        out[f"{tag}_vs_uninterrupted_metrics"] = again == uninterrupted
        out[f"{tag}_vs_uninterrupted_weights"] = equal(w_again, w_uninterrupted)
        out[f"{tag}_vs_uninterrupted_max"] = max_diff(w_again, w_uninterrupted)
        if rank == 0 and not save_optim:
            shutil_size = sum(f.stat().st_size for f in ckpt.rglob("*") if f.is_file())
            with_opt = sum(f.stat().st_size for f in (root / f"ckpt_optim_tp{tp}").rglob("*") if f.is_file())
            out["no_optim_smaller"] = shutil_size < with_opt / 2  # Adam's two moments are gone
    return out


def main(rank: int, world: int, port: int, root: Path, tp: int) -> None:
    if rank == 0:
        tiny_hf("qwen2", root / "hf_qwen2")
        tiny_hf("glm4", root / "hf_glm4")
        torch.save(torch_reference(root / "hf_qwen2", samples(24, seed=3)), root / "torch_ref.pt")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=10))
    results = {"parity": parity(tp, root), "resume": resume(tp, root, rank)}
    if rank == 0:
        print("RESULT " + json.dumps(results), flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]))
