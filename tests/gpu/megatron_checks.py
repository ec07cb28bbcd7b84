"""GPU checks of the Megatron backend, run under torchrun (1 or 2 processes); exits non-zero on failure.

    torchrun --nproc_per_node=2 tests/gpu/megatron_checks.py --tp 2 --out $OUT/mg_tp2

Checks (tolerances fixed here, before any run):
1. logits: HF vs Megatron on tiny random GLM4 / Qwen2 / Llama models.
   fp32 (TF32 off): max |Δlogit| <= 1e-4 (summation order only).
   bf16: max |Δ(Megatron-bf16, HF-fp32)| <= 2 x max |Δ(HF-bf16, HF-fp32)| + 0.02 — Megatron in bf16 may be
   at most twice as far from the exact logits as HF itself is in bf16 (0.02 floor for bf16 rounding of
   logits of magnitude ~1).
2. one SGD step, fp32, same weights and samples: Megatron backend vs torch backend (the torch reference
   loaded in fp32, checked against the checkpoint). |loss_M - loss_T| <= 1e-5 (+1e-4 relative); every
   updated weight max |Δ| <= 1e-5 (lr 1.0, so the weight difference IS the gradient difference). On DP=1
   the gradients are compared directly too. Then full train_steps with weight decay (SGD, AdamW with
   clipping): see optimizer_step_parity. Failures print the worst parameters by name.
3. save -> 2 more steps vs load -> the same 2 steps: bit-identical weights and metrics (bf16).
4. a 40-step GRPO run on a toy copy task (see grpo_tiny): the reward rises by more than 0.3.
Dynamic batching is on with a budget that splits the step into several micro-batches per rank, and the
torch backend uses a different budget, so equal results also show that packing does not change the loss.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from kuberl.worker.algo.losses import LossConfig

warnings.filterwarnings("ignore")
ALGO = {"advantage_estimator": "grpo", "eps_clip": 0.2, "eps_clip_high": 0.28, "use_kl_loss": False,
        "kl_loss_coef": 0.0, "entropy_coef": 0.0, "calculate_per_token_loss": False}
SGD = {"type": "sgd", "lr": 1.0, "min_lr": 0.0, "weight_decay": 0.0, "adam_beta1": 0.9,
       "adam_beta2": 0.98, "adam_eps": 1e-8, "clip_grad": 0.0, "lr_decay_style": "constant"}
ADAM = {**SGD, "type": "adam", "lr": 1e-3, "clip_grad": 1.0}
FAILURES: list[str] = []


def say(msg: str) -> None:
    if dist.get_rank() == 0:
        print(msg, flush=True)


def check(ok: bool, what: str) -> None:
    say(("PASS " if ok else "FAIL ") + what)
    if not ok:
        FAILURES.append(what)


def worst(diffs: dict[str, float], k: int = 3) -> str:
    """The k parameters with the largest max |Δ|, for the log (which weights disagree, not just how much)."""
    top = sorted(diffs.items(), key=lambda kv: -kv[1])[:k]
    return ", ".join(f"{n}={v:.2e}" for n, v in top)


def by_decay_group(diffs: dict[str, float]) -> str:
    """Max |Δ| over decayed weights vs biases/1-D (Megatron's no-decay group), by HF name."""
    from kuberl.worker.train.torch_backend import skips_weight_decay

    groups: dict[str, float] = {"decayed": 0.0, "no-decay (bias/1-D)": 0.0}
    for n, v in diffs.items():
        key = "no-decay (bias/1-D)" if skips_weight_decay(n, torch.empty(DIMS[n])) else "decayed"
        groups[key] = max(groups[key], v)
    return ", ".join(f"{k} {v:.2e}" for k, v in groups.items())


DIMS: dict[str, tuple[int, ...]] = {}


def tiny_hf(family: str, out: Path, vocab: int = 300):
    from transformers import (
        Glm4Config,
        Glm4ForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    classes = {"glm4": (Glm4Config, Glm4ForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM),
               "llama": (LlamaConfig, LlamaForCausalLM)}
    cfg_cls, model_cls = classes[family]
    torch.manual_seed(0)
    model = model_cls(cfg_cls(
        vocab_size=vocab, pad_token_id=0, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
        max_position_embeddings=512,
    )).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(torch.randn_like(p) * 0.1)
    if dist.get_rank() == 0:
        model.save_pretrained(out)
    dist.barrier()
    return model


def samples(n: int, vocab: int, seed: int):
    from kuberl.worker.train.batch import TrainSample

    rng = random.Random(seed)
    out = []
    for _ in range(n):
        p, r = rng.randint(3, 40), rng.randint(2, 60)
        out.append(TrainSample(
            tokens=[rng.randrange(1, vocab) for _ in range(p + r)], prompt_len=p,
            advantages=[rng.uniform(-1, 1)] * r, loss_mask=[int(rng.random() > 0.1) for _ in range(r)],
        ))
    return out


def logits_parity(tp: int, root: Path) -> None:
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from kuberl.worker.train import megatron_model as mm
    from kuberl.worker.train.hf_megatron import ModelShape

    for family in ("glm4", "qwen2", "llama"):
        d = root / f"hf_{family}"
        hf = tiny_hf(family, d).cuda()
        shape = ModelShape.from_hf_dir(d)
        ids = torch.randint(1, 300, (3, 64), generator=torch.Generator().manual_seed(2)).cuda()
        pos = torch.arange(64, device="cuda")[None].expand(3, -1)
        with torch.no_grad():
            ref = hf(input_ids=ids).logits.float()
            hf_bf16 = hf.to(torch.bfloat16)(input_ids=ids).logits.float()
            for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
                model = mm.build_gpt_model(shape, mm.Parallelism(tp=tp), dtype=dtype, use_te=False,
                                           device=torch.device("cuda"))
                mm.load_hf_weights(model, shape, str(d), ps.get_tensor_model_parallel_rank(), tp)
                out = gather_from_tensor_model_parallel_region(
                    model(input_ids=ids, position_ids=pos, attention_mask=None))[..., :300].float()
                err = (out - ref).abs().max().item()
                if name == "fp32":
                    check(err <= 1e-4, f"logits {family} TP{tp} fp32: max|Δ|={err:.2e} <= 1e-4")
                else:
                    hf_err = (hf_bf16 - ref).abs().max().item()
                    bound = 2 * hf_err + 0.02
                    check(err <= bound, f"logits {family} TP{tp} bf16: max|Δ|={err:.3e} <= "
                                        f"2*{hf_err:.3e}+0.02 (HF's own bf16 error)")
                del model
        del hf
        torch.cuda.empty_cache()


def backend(hf_dir: Path, tp: int, *, dtype: str, optimizer: dict, budget: int, **kw):
    from kuberl.worker.train.megatron_backend import MegatronBackend, MegatronBackendConfig

    cfg = MegatronBackendConfig(
        hf_checkpoint=str(hf_dir), loss=LossConfig.from_algorithm(ALGO), optimizer=optimizer, use_dynamic_batch_size=True,
        max_tokens_per_gpu=budget, tensor_model_parallel_size=tp, temperature=0.8, dtype=dtype,
        use_transformer_engine=False, **kw,
    )
    return MegatronBackend(cfg)


def torch_reference(d: Path, optimizer: dict):
    """The torch backend in fp32 on the same checkpoint. Round 2 built it with the CUDA default (bf16)
    and called ``.float()`` afterwards: weights rounded to bf16 made every parity check fail (logprobs
    3.05e-3, grads 1.01e-4, weights 3.90e-3 = half a bf16 ulp of the norm weights; reproduced on CPU).
    The first check below proves the reference holds the checkpoint's exact weights."""
    from safetensors.torch import load_file

    from kuberl.worker.train.torch_backend import TorchBackend, TorchBackendConfig

    tb = TorchBackend(TorchBackendConfig(hf_checkpoint=str(d), loss=LossConfig.from_algorithm(ALGO), optimizer=optimizer,
                                         use_dynamic_batch_size=True, max_tokens_per_gpu=700,
                                         device="cuda", temperature=0.8, dtype="float32"))
    ckpt = load_file(str(d / "model.safetensors"))
    params = dict(tb.model.named_parameters())
    DIMS.update({n: tuple(p.shape) for n, p in params.items()})
    err = max((params[n].detach().cpu() - t).abs().max().item() for n, t in ckpt.items() if n in params)
    return tb, err


def loss_and_grad_parity(tp: int, root: Path) -> None:
    d = root / "hf_qwen2"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    data = samples(24, 300, seed=3)
    for s in data:  # a second step's worth of old logprobs makes the ratio != 1
        s.old_logprobs = None
    tb, load_err = torch_reference(d, SGD)
    check(load_err == 0.0, f"torch reference holds the fp32 checkpoint exactly: max|Δ|={load_err:.2e}")
    lp_t = tb.compute_logprobs(data)
    mt = tb.train_step(data)
    grads_t = {n: p.grad.detach().clone() for n, p in tb.model.named_parameters() if p.grad is not None}
    weights_t = {n: p.detach().clone() for n, p in tb.model.named_parameters()}
    del tb
    mb = backend(d, tp, dtype="float32", optimizer=SGD, budget=300)
    lp_m = mb.compute_logprobs(data)
    lp_err = max(abs(a - b) for x, y in zip(lp_m, lp_t, strict=True) for a, b in zip(x, y, strict=True))
    check(lp_err <= 1e-4, f"logprobs at T=0.8 fp32 TP{tp} DP{mb.dp_size}: max|Δ|={lp_err:.2e} <= 1e-4")
    mm_ = mb.accumulate_grads(data)
    lt, lm = mt["train/loss"], mm_["loss"]
    check(abs(lt - lm) <= 1e-5 + 1e-4 * abs(lt),
          f"loss TP{tp} DP{mb.dp_size}: megatron {lm:.7f} vs torch {lt:.7f}")
    if mb.dp_size == 1:
        grads_m = dict(mb.named_grads())
        gd = {n: (grads_m[n].float() - g).abs().max().item() for n, g in grads_t.items()}
        gerr = max(gd.values())
        check(gerr <= 1e-5, f"gradients TP{tp}: max|Δ| over all params = {gerr:.2e} <= 1e-5")
        say(f"  worst gradients: {worst(gd)}")
    for group in mb.optimizer.param_groups:
        group["lr"] = 1.0
    mb.optimizer.step()
    weights_m = dict(mb.named_weights())
    wd = {n: (weights_m[n].float() - w).abs().max().item() for n, w in weights_t.items()}
    werr = max(wd.values())
    check(werr <= 1e-5, f"weights after one SGD step (lr 1) TP{tp} DP{mb.dp_size}: max|Δ|={werr:.2e} <= 1e-5")
    say(f"  worst weights: {worst(wd)}; by group: {by_decay_group(wd)}")
    del mb
    torch.cuda.empty_cache()
    optimizer_step_parity(tp, root, data)


def optimizer_step_parity(tp: int, root: Path, data: list) -> None:
    """One full ``train_step`` on both backends, fp32: SGD with weight decay 0.1 (lr 1), then AdamW with
    weight decay 0.1 and clipping at 0.01 (lr 1e-4). Both backends follow Megatron's rule (no decay on
    biases and 1-D parameters); clipping and the optimizer's fp32 main params are megatron's own code.
    Tolerances, fixed before the run: SGD 1e-5 (as the gradient check); AdamW 5e-6 = 5% of lr (Adam's
    first step is ~lr*sign(g), so a gradient within summation noise of 0 may move up to lr).
    """
    cases = (("SGD wd 0.1 lr 1", {**SGD, "weight_decay": 0.1}, 1e-5),
             ("AdamW wd 0.1 clip 0.01 lr 1e-4", {**ADAM, "lr": 1e-4, "weight_decay": 0.1, "clip_grad": 0.01},
              5e-6))
    for label, opt, tol in cases:
        tb, _ = torch_reference(root / "hf_qwen2", opt)
        mt = tb.train_step(data)
        weights_t = {n: p.detach().clone() for n, p in tb.model.named_parameters()}
        del tb
        mb = backend(root / "hf_qwen2", tp, dtype="float32", optimizer=opt, budget=300)
        mm_ = mb.train_step(data)
        wd = {n: (w.float() - weights_t[n]).abs().max().item() for n, w in mb.named_weights()}
        werr = max(wd.values())
        check(werr <= tol, f"train_step {label} TP{tp} DP{mb.dp_size}: weights max|Δ|={werr:.2e} <= {tol:.0e}")
        say(f"  grad_norm megatron {mm_['train/grad_norm']:.6g} vs torch {mt['train/grad_norm']:.6g}; "
            f"by group: {by_decay_group(wd)}; worst: {worst(wd)}")
        del mb
        torch.cuda.empty_cache()


def resume_bit_identical(tp: int, root: Path) -> None:
    d = root / "hf_glm4"
    data = [samples(16, 300, seed=10 + i) for i in range(3)]
    mb = backend(d, tp, dtype="bfloat16", optimizer=ADAM, budget=400)
    mb.train_step(data[0])
    ckpt = root / "ckpt"
    w_saved = {n: t.clone() for n, t in mb.named_weights()}
    mb.save(ckpt)
    after = [mb.train_step(x) for x in data[1:]]
    w_after = {n: t.clone() for n, t in mb.named_weights()}
    mb.load(ckpt)
    w_loaded = dict(mb.named_weights())
    check(all(torch.equal(w_saved[n], w_loaded[n]) for n in w_saved),
          f"load restores the saved weights exactly TP{tp}")
    # Round 2: megatron's loader (no TE/apex) gave every parameter ONE shared Adam step tensor, so the
    # next step advanced it once per parameter (see megatron_backend.untie_step_counters).
    torch_states = [o.optimizer.state for o in getattr(mb.optimizer, "chained_optimizers", [mb.optimizer])]
    steps = [st["step"] for states in torch_states for st in states.values() if "step" in st]
    distinct = len({id(t) for t in steps}) == len(steps)
    values = sorted({float(t) for t in steps})
    check(distinct and values == [1.0], f"Adam step counters after load: distinct {distinct}, values "
                                        f"{values} (saved after 1 step)")
    again = [mb.train_step(x) for x in data[1:]]
    w_again = dict(mb.named_weights())
    same_w = all(torch.equal(w_after[n], w_again[n]) for n in w_after)
    same_m = after == again
    check(same_w and same_m, f"save -> load -> 2 steps bit-identical TP{tp} (weights {same_w}, "
                             f"metrics {same_m})")
    if not same_m:
        for i, (a, b) in enumerate(zip(after, again, strict=True)):
            say(f"  step {i + 1} after load: " + ", ".join(
                f"{k} {a[k]:.6g}/{b.get(k, float('nan')):.6g}" for k in sorted(a) if a[k] != b.get(k)))
    if not same_w:
        say(f"  worst weights: {worst({n: (w_after[n].float() - w_again[n].float()).abs().max().item() for n in w_after})}")
    export = root / "export"
    mb.export_hf_checkpoint(export)
    if dist.get_rank() == 0:
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(export)
        sd = m.state_dict()
        ok = all(torch.equal(sd[n].to(w_again[n].dtype).cpu(), w_again[n].cpu()) for n in w_again)
        check(ok, f"export_hf_checkpoint loads in transformers with the trained weights TP{tp}")
    dist.barrier()
    del mb


def grpo_tiny(tp: int, root: Path) -> None:
    """A short GRPO run with the Megatron backend on a toy task: the prompt is three letters, the
    answer is the last one. Sampling uses the trained Megatron model itself (T=1, rank 0 samples, every
    rank receives the same list); advantages are kuberl's GRPO group advantages.
    Pass: mean reward of the last 5 steps > first 5 steps + 0.3 (chance is 1/32 with a 32-token vocab).
    """
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

    from kuberl.worker.algo.advantages import group_advantages
    from kuberl.worker.train.batch import TrainSample

    vocab, letters, group, prompts_per_step, steps = 32, list(range(8, 24)), 8, 32, 40
    d = root / "hf_grpo"
    tiny_hf("glm4", d, vocab=vocab)
    adam = {**ADAM, "lr": 3e-3, "adam_beta2": 0.98, "clip_grad": 1.0, "weight_decay": 0.0}
    mb = backend(d, tp, dtype="bfloat16", optimizer=adam, budget=2048)
    rng = random.Random(0)
    gen = torch.Generator(device="cuda").manual_seed(0)
    rewards_per_step: list[float] = []
    for _ in range(steps):
        prompts = [[1, *(rng.choice(letters) for _ in range(3)), 2] for _ in range(prompts_per_step)]
        ids = torch.tensor([p for p in prompts for _ in range(group)], device="cuda")
        mb.model.eval()
        with torch.no_grad():
            logits = gather_from_tensor_model_parallel_region(
                mb.model(input_ids=ids, position_ids=torch.arange(5, device="cuda")[None].expand(len(ids), -1),
                         attention_mask=None))[:, -1, :vocab].float()
        mb.model.train()
        # Sample at the temperature the backend trains at (as the engines do): round 2 sampled at T=1
        # while the loss used T=0.8.
        probs = torch.softmax(logits / mb.config.temperature, -1)
        answer = torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
        obj = [answer]
        dist.broadcast_object_list(obj)  # rank 0's sample is the step's sample on every rank
        answer = obj[0]
        reward = torch.tensor([float(a == row[3]) for a, row in zip(answer, ids.tolist(), strict=True)])
        adv = group_advantages(reward, group)
        data = [TrainSample(tokens=[*row, a], prompt_len=5, advantages=[float(v)], loss_mask=[1])
                for row, a, v in zip(ids.tolist(), answer, adv.tolist(), strict=True)]
        mb.train_step(data)
        rewards_per_step.append(float(reward.mean()))
    first, last = sum(rewards_per_step[:5]) / 5, sum(rewards_per_step[-5:]) / 5
    check(last > first + 0.3, f"GRPO tiny task TP{tp} DP{mb.dp_size}: reward {first:.3f} -> {last:.3f} "
                              f"over {steps} steps (needs +0.3)")
    say("grpo rewards: " + " ".join(f"{r:.2f}" for r in rewards_per_step))
    del mb
    torch.cuda.empty_cache()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tp", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    dist.init_process_group("nccl")
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    from kuberl.worker.train import megatron_model as mm

    mm.init_parallel(mm.Parallelism(tp=args.tp), device=torch.device("cuda"))
    root = Path(tempfile.mkdtemp(prefix="mg-checks-")) if args.out is None else args.out
    if dist.get_rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
    obj = [str(root)]
    dist.broadcast_object_list(obj)
    root = Path(obj[0])
    say(f"== megatron checks: world {dist.get_world_size()} TP{args.tp} "
        f"DP{dist.get_world_size() // args.tp} on {torch.cuda.get_device_name()}")
    t0 = time.time()
    for name, fn in (("logits", logits_parity), ("loss/grads", loss_and_grad_parity),
                     ("resume", resume_bit_identical), ("grpo", grpo_tiny)):
        try:
            fn(args.tp, root)
        except Exception as exc:  # report and go on with the next check
            import traceback

            traceback.print_exc()
            check(False, f"{name} raised {type(exc).__name__}: {exc}")
    say(json.dumps({"tp": args.tp, "world": dist.get_world_size(), "failures": FAILURES,
                    "seconds": round(time.time() - t0, 1)}))
    dist.barrier()
    dist.destroy_process_group()
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
