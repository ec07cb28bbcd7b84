"""Rollout throughput through the driver's collector against a plain client, same engine and load, one run.

Issue 11 item 6: the collector (prompt groups, grading in the process pool, the DAPO zero-std filter
of dynamic sampling, the partial-rollout buffer) should keep at least 90 % of the tokens/s that a plain
concurrent client gets from the same engine. Both paths send the same load: ``--prompts`` random
prompts of ``--prompt-len`` tokens, ``--group-size`` samples each, all requests at once, ``ignore_eos``
so every response is exactly ``--max-new-tokens`` long, logprobs returned (the collector needs them, so
the plain client asks for them too and the engine does the same work). Each measured round uses fresh
prompts and starts from a flushed cache; the rounds alternate plain / collector after a short warm-up
of both paths (CUDA kernels, the grading pool's processes).

The grader is cheap on purpose, the parity of the sample index: every group then has mixed rewards,
the filter keeps all of them, and the collector sends exactly the plain client's requests (a dropped
group would start a second wave and change the load).

    .venv/bin/python bench/rollout_throughput_bench.py              # CPU: embedded engine, tiny model
    python3 bench/rollout_throughput_bench.py --url http://127.0.0.1:30002 \\
        --prompts 32 --group-size 8 --prompt-len 128 --max-new-tokens 1024   # GPU: running SGLang

Top-level imports stay light: the grading pool's spawned children import this module (the grader).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

GRADER = "rollout_throughput_bench:index_parity"  # importable in pool children: bench/ is on sys.path
TARGET_RATIO = 0.90


def index_parity(args: Any, sample: Any) -> float:
    """The cheap grader: 1 for odd sample indices, so each group of >= 2 samples has mixed rewards."""
    return float(sample.index % 2)


def make_prompts(count: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """Pure: ``count`` random prompts of ``length`` token ids in [10, vocab) (past special tokens)."""
    rng = random.Random(seed)
    low = min(10, vocab - 1)
    return [[rng.randrange(low, vocab) for _ in range(length)] for _ in range(count)]


@dataclass
class Round:
    """One measured pass of one path over the whole load."""

    path: str  # "plain" or "collector"
    requests: int
    tokens: int  # generated tokens
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


async def plain_round(url: str, prompts: list[list[int]], group_size: int,
                      params: dict[str, Any]) -> Round:
    """Every request at once from one httpx client: the engine's own throughput."""
    import httpx

    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=None)) as c:

        async def one(ids: list[int]) -> int:
            r = await c.post(url + "/generate", json={
                "input_ids": ids, "sampling_params": params, "return_logprob": True})
            r.raise_for_status()
            body = r.json()
            return len(body.get("output_ids") or body["meta_info"]["output_token_logprobs"])

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(p) for p in prompts for _ in range(group_size)))
        wall = time.perf_counter() - t0
    return Round("plain", len(counts), sum(counts), wall)


async def collector_round(url: str, prompts: list[list[int]], group_size: int,
                          params: dict[str, Any], scorer: Any, round_id: int) -> Round:
    """The driver's path: collect_rollout over an EngineBalancer, pool grading, filter, buffer."""
    from kuberl.worker.rollout.balancer import EngineBalancer
    from kuberl.worker.rollout.dynamic_sampling import CollectorSettings, collect_rollout
    from kuberl.worker.rollout.engine_client import EngineClient
    from kuberl.worker.rollout.filters import check_reward_nonzero_std
    from kuberl.worker.rollout.generate import make_group
    from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer

    cursor = {"group": 0}

    def next_groups(n: int) -> list[list[Any]]:
        out = []
        while len(out) < n and cursor["group"] < len(prompts):
            g = cursor["group"]
            out.append(make_group(prompts[g], group_size, g, g * group_size))
            cursor["group"] += 1
        return out

    settings = CollectorSettings(
        target_groups=len(prompts), over_sampling_groups=len(prompts),
        max_new_tokens=params["max_new_tokens"],
        sampling_params={k: v for k, v in params.items() if k != "max_new_tokens"},
        partial_rollout=True, mask_offpolicy=True,
    )
    endpoint = EngineBalancer([EngineClient(url)])
    try:
        t0 = time.perf_counter()
        result = await collect_rollout(endpoint, round_id, settings, next_groups, scorer.score,
                                       PartialRolloutBuffer(), check_reward_nonzero_std)
        wall = time.perf_counter() - t0
    finally:
        for engine in endpoint.engines:
            await engine.aclose()
    kept = [s for g in result.groups for s in g]
    if len(result.groups) != len(prompts) or result.dropped:
        raise RuntimeError(f"the collector kept {len(result.groups)}/{len(prompts)} groups "
                           f"(dropped {dict(result.dropped)}): the load differs from the plain path")
    return Round("collector", len(kept), result.generated_tokens, wall)


async def flush(url: str) -> None:
    """Empty the engine's prefix cache so a round cannot reuse the previous one's prompts."""
    from kuberl.worker.rollout.engine_client import EngineClient

    async with EngineClient(url) as c:
        for _ in range(50):
            if await c.flush_cache():
                return
            await asyncio.sleep(0.2)


async def engine_vocab(url: str, fallback: int) -> int:
    """The served model's vocabulary size, read from its config when the path is local."""
    from kuberl.worker.rollout.engine_client import EngineClient

    async with EngineClient(url) as c:
        info = await c.model_info()
    config = Path(str(info.get("model_path", ""))) / "config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("vocab_size", fallback))
    return fallback


def machine() -> str:
    """One line naming where this ran (GPU name when torch sees one) and the load."""
    desc = f"{platform.node()} ({os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f})"
    try:
        import torch

        if torch.cuda.is_available():
            desc += f", {torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return desc


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    from kuberl.worker.rewards.pool import GradingPool, default_workers
    from kuberl.worker.rewards.scorer import RewardConfig, Scorer

    vocab = args.vocab or await engine_vocab(url, 256)
    params = {"temperature": 1.0, "max_new_tokens": args.max_new_tokens, "ignore_eos": True}
    pool = GradingPool(workers=default_workers())
    scorer = Scorer(RewardConfig(custom_rm_path=GRADER), pool)
    rounds: list[Round] = []
    try:
        warm = {**params, "max_new_tokens": min(16, args.max_new_tokens)}
        warm_prompts = make_prompts(args.prompts, args.prompt_len, vocab, args.seed + 999)
        await plain_round(url, warm_prompts, args.group_size, warm)
        await collector_round(url, warm_prompts, args.group_size, warm, scorer, 0)
        for r in range(args.repeats):
            for k, path in enumerate(("plain", "collector")):
                prompts = make_prompts(args.prompts, args.prompt_len, vocab, args.seed + 2 * r + k)
                await flush(url)
                if path == "plain":
                    rounds.append(await plain_round(url, prompts, args.group_size, params))
                else:
                    rounds.append(await collector_round(url, prompts, args.group_size, params,
                                                         scorer, r + 1))
                print(f"  round {r + 1} {path:9s} {rounds[-1].tokens_per_s:10.1f} tokens/s "
                      f"({rounds[-1].tokens} tokens in {rounds[-1].wall_s:.2f} s)", flush=True)
    finally:
        pool.close()
    plain = statistics.fmean(x.tokens_per_s for x in rounds if x.path == "plain")
    coll = statistics.fmean(x.tokens_per_s for x in rounds if x.path == "collector")
    return {
        "machine": machine(), "engine_url": url, "vocab": vocab,
        "load": {"prompts": args.prompts, "group_size": args.group_size,
                 "requests": args.prompts * args.group_size, "prompt_len": args.prompt_len,
                 "max_new_tokens": args.max_new_tokens, "ignore_eos": True, "repeats": args.repeats},
        "rounds": [{**asdict(x), "tokens_per_s": x.tokens_per_s} for x in rounds],
        "plain_tokens_per_s": plain, "collector_tokens_per_s": coll,
        "ratio": coll / plain if plain else 0.0, "target_ratio": TARGET_RATIO,
    }


def report(out: dict[str, Any]) -> str:
    """The printed summary: machine, load, both throughputs and their ratio against the target."""
    load = out["load"]
    verdict = "meets" if out["ratio"] >= out["target_ratio"] else "MISSES"
    return "\n".join([
        f"machine: {out['machine']}; engine {out['engine_url']}",
        f"load: {load['requests']} requests ({load['prompts']} prompts x {load['group_size']}), "
        f"{load['prompt_len']}-token prompts + {load['max_new_tokens']} sampled tokens, ignore_eos, "
        f"{load['repeats']} round(s) per path",
        "| path | tokens/s |",
        "|---|---|",
        f"| plain concurrent client | {out['plain_tokens_per_s']:.1f} |",
        f"| driver collector | {out['collector_tokens_per_s']:.1f} |",
        f"ratio collector/plain: {out['ratio']:.3f} ({verdict} the target {out['target_ratio']:.2f})",
    ])


def start_embedded(args: argparse.Namespace) -> tuple[Any, str]:
    """A tiny model and the embedded engine as a process (the launcher's command), for CPU runs."""
    import socket

    from kuberl.worker.engine.launcher import EngineSpec, launch_engine
    from kuberl.worker.tiny_model import build_tiny_model

    model = build_tiny_model(Path(args.workdir) / "tiny-qwen2", "qwen2", seed=0,
                             max_position_embeddings=1024)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = EngineSpec(model_path=str(model), port=port, kind="embedded")
    proc = launch_engine(spec, str(Path(args.workdir) / "engine.log"))
    asyncio.run(proc.wait_ready(timeout_s=300))
    return proc, spec.url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="a running SGLang-protocol engine; default: start the embedded one")
    p.add_argument("--prompts", type=int, default=None, help="prompt groups (GPU default 32)")
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=None, help="tokens (GPU default 128)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="GPU default 1024")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--vocab", type=int, default=None, help="prompt ids range; default: from config")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="CPU: where the tiny model and engine log go")
    p.add_argument("--json", default=None, help="write the figures here")
    args = p.parse_args(argv)
    gpu = args.url is not None  # issue 11's load on a real engine, small defaults on CPU
    args.prompts = args.prompts or (32 if gpu else 4)
    args.prompt_len = args.prompt_len or (128 if gpu else 16)
    args.max_new_tokens = args.max_new_tokens or (1024 if gpu else 32)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the pool's children import GRADER
    proc = None
    tmp = None
    if args.url is None:
        if args.workdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="kuberl-throughput-")
            args.workdir = tmp.name
        proc, url = start_embedded(args)
    else:
        url = args.url.rstrip("/")
    try:
        out = asyncio.run(run(args, url))
    finally:
        if proc is not None:
            proc.stop()
        if tmp is not None:
            tmp.cleanup()
    print(report(out), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
