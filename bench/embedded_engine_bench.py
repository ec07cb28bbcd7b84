"""Embedded engine throughput vs plain ``model.generate`` on the same model and prompts, same run.

The engine is driven over HTTP with every request in flight at once (how the rollout uses it); the
baseline is one batched, left-padded ``model.generate`` call. Both generate exactly
``--max-new-tokens`` per prompt with temperature 1, so generated tokens/s compare directly.

    .venv/bin/python bench/embedded_engine_bench.py [--model-path DIR] [--prompts 32] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import tempfile
import time

import torch


def make_prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(5, vocab) for _ in range(rng.randint(16, 48))] for _ in range(n)]


def bench_hf_generate(model_path: str, prompts: list[list[int]], new_tokens: int, pad_id: int,
                      device: str = "cpu", dtype: str = "float32") -> float:
    """Generated tokens/s of one batched model.generate call."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    model.to(device).eval()
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, P - len(p):] = torch.tensor(p)
        mask[i, P - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    kwargs = dict(attention_mask=mask, do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                  max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad_id)
    with torch.no_grad():
        model.generate(ids[:2], **{**kwargs, "attention_mask": mask[:2], "max_new_tokens": 4,
                                   "min_new_tokens": 4})  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        out = model.generate(ids, **kwargs)
        _sync(device)
        elapsed = time.perf_counter() - t0
    return (out.shape[1] - P) * len(prompts) / elapsed


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


async def _engine_run(url: str, prompts: list[list[int]], new_tokens: int) -> tuple[int, float]:
    from kuberl.worker.rollout.engine_client import EngineClient

    params = {"temperature": 1.0, "max_new_tokens": new_tokens, "ignore_eos": True}
    async with EngineClient(url) as c:
        await c.generate(prompts[0], {**params, "max_new_tokens": 4})  # warm-up
        t0 = time.perf_counter()
        outs = await asyncio.gather(*(c.generate(p, params) for p in prompts))
        elapsed = time.perf_counter() - t0
    return sum(len(o.output_ids) for o in outs), elapsed


def bench_engine(model_path: str, prompts: list[list[int]], new_tokens: int,
                 device: str = "cpu", dtype: str = "float32") -> float:
    """Generated tokens/s of the embedded engine with all requests concurrent."""
    from kuberl.worker.engine.server import EngineArgs, serve_in_thread

    handle = serve_in_thread(EngineArgs(model_path=model_path, port=0, device=device, dtype=dtype))
    try:
        tokens, elapsed = asyncio.run(_engine_run(handle.url, prompts, new_tokens))
        c = handle.engine.scheduler.counters
        print(f"  (engine run: {elapsed:.2f} s, {c['decode_steps']} decode steps, "
              f"{c['prefill_batches']} prefill batches)")
    finally:
        handle.stop()
    return tokens / elapsed


def bench_step_loop(model_path: str, prompts: list[list[int]], new_tokens: int,
                    device: str = "cpu", dtype: str = "float32") -> float:
    """Generated tokens/s of the engine's step loop alone (no HTTP, every request admitted at once)."""
    from transformers import AutoModelForCausalLM

    from kuberl.worker.engine.sampling import SamplingParams
    from kuberl.worker.engine.scheduler import GenerationRequest, Scheduler

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype))
    sched = Scheduler(model.to(device).eval(), eos_token_ids=set(), decode_text=None)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
    reqs = [GenerationRequest(rid=str(i), input_ids=p, params=params) for i, p in enumerate(prompts)]
    _sync(device)
    t0 = time.perf_counter()
    sched._waiting.extend(reqs)  # driven inline: the step thread is not started
    sched._admit()
    while sched._rows:
        sched._decode()
    _sync(device)
    return sum(len(r.output_ids) for r in reqs) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", help="HF model dir; default: a tiny model built here")
    parser.add_argument("--hidden-size", type=int, default=256, help="tiny model width")
    parser.add_argument("--layers", type=int, default=4, help="tiny model depth")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (1 avoids OpenMP stalls on a busy machine)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs for each side")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import AutoConfig

    from kuberl.worker.tiny_model import build_tiny_model

    model_path = args.model_path or str(build_tiny_model(
        tempfile.mkdtemp(prefix="kuberl-bench-"), "qwen2", seed=args.seed,
        hidden_size=args.hidden_size, num_layers=args.layers))
    cfg = AutoConfig.from_pretrained(model_path)
    prompts = make_prompts(args.prompts, cfg.vocab_size, args.seed)
    torch.manual_seed(args.seed)
    engine_tps = hf_tps = loop_tps = 0.0
    for _ in range(args.repeats):
        loop_tps = max(loop_tps, bench_step_loop(model_path, prompts, args.max_new_tokens,
                                                 args.device, args.dtype))  # alternate, so both sides see the same machine load
        engine_tps = max(engine_tps, bench_engine(model_path, prompts, args.max_new_tokens,
                                                  args.device, args.dtype))
        hf_tps = max(hf_tps, bench_hf_generate(model_path, prompts, args.max_new_tokens,
                                               cfg.pad_token_id or 0, args.device, args.dtype))
    print(f"model: {model_path} ({cfg.model_type}, hidden {cfg.hidden_size}, "
          f"{cfg.num_hidden_layers} layers, vocab {cfg.vocab_size})")
    print(f"workload: {args.prompts} prompts x {args.max_new_tokens} new tokens, temperature 1")
    where = (torch.cuda.get_device_name() if args.device.startswith("cuda")
             else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {where}, {args.dtype}, torch {torch.__version__}")
    print(f"best of {args.repeats} runs each, alternating")
    print(f"embedded engine   : {engine_tps:10.1f} generated tokens/s")
    print(f"  its step loop   : {loop_tps:10.1f} generated tokens/s (no HTTP, all admitted at once)")
    print(f"HF model.generate : {hf_tps:10.1f} generated tokens/s")
    print(f"ratio engine/HF   : {engine_tps / hf_tps:10.2f}")


if __name__ == "__main__":
    main()
