"""Rollout wall time and wasted tokens with and without partial rollout, same engine, same run.

Dynamic sampling over-samples ``--over-sampling`` x the target, a filter drops some groups, and the
rollout stops (aborting what is in flight) as soon as ``--target-groups`` groups are kept. Without partial
rollout an aborted group is requeued from scratch and its tokens are wasted; with it, the partial
responses go to the buffer and are continued by the next rollout. Several consecutive rollouts run per
mode so that resumed samples matter, against a real embedded engine process (the production code
path: ``collect_rollout`` over HTTP, aborts at the engine).

The long tail comes from the model itself: a random-initialised tiny model sampled at temperature 1,
with ``--stop-tokens`` ordinary token ids (besides EOS) as stop tokens and a large ``--max-new-tokens``.
Its sharpened output layer makes it drift between a few attractors, so a response ends when it first
samples a stop token: most end within tens of tokens, a few run for hundreds, and some hit the cap (with
the defaults, kept samples p50 about 50, p90 about 150, p99 about 300). The run prints the percentiles it
actually saw. The filter keeps the DAPO shape (drop a group whose
rewards are all equal) with a cheap reward, the parity of the response length, so it drops about
2/2^G of the groups independent of the mode.

    .venv/bin/python bench/partial_rollout_bench.py [--rollouts 8] [--repeats 2] [--target-groups 16] [--stop-tokens 3]

Top-level imports stay light: nothing here spawns, but the module may be imported by spawned children.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("off", "on")
STOP_BASE = 10  # first stop token id: past the tokenizer's special tokens


@dataclass
class ModeFigures:
    """What one mode did over its consecutive rollouts (summed over repeats)."""

    wall_s: list[float] = field(default_factory=list)  # one per rollout
    generated_tokens: int = 0  # everything the engine produced, resumed continuations included
    tokens_wasted: int = 0  # generated, then thrown away by an abort (partial rollout off)
    tokens_reused: int = 0  # partial tokens continued instead of regenerated (partial rollout on)
    kept_tokens: int = 0  # response tokens in the groups handed to training
    aborted_samples: int = 0
    resumed_samples: int = 0
    dropped_groups: int = 0
    waves: int = 0
    lengths: list[int] = field(default_factory=list)  # response lengths of kept samples
    # Per rollout, the most tokens any kept sample generated in it: about the decode steps the rollout
    # had to wait for, a load-independent proxy for its wall time.
    critical_tokens: list[int] = field(default_factory=list)
    # Per rollout, seconds from the target being reached to collect_rollout returning (aborts, draining).
    drain_s: list[float] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prompts(n: int, vocab: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(8, vocab) for _ in range(rng.randint(8, 24))] for _ in range(n)]


def _group_source(prompts: list[list[int]], group_size: int) -> Any:
    """Fresh prompt groups in a fixed order, so both modes see the same prompts in the same order."""
    from kuberl.worker.rollout.generate import make_group

    cursor = [0]

    def next_groups(n: int) -> list[list[Any]]:
        out = []
        for _ in range(n):
            g = cursor[0]
            out.append(make_group(prompts[g % len(prompts)], group_size, g, g * group_size))
            cursor[0] += 1
        return out

    return next_groups


async def _grade_parity(group: list[Any]) -> None:
    """A cheap reward with variance inside a group: 1 for an even response length, else 0."""
    for s in group:
        s.reward = float(s.response_length % 2 == 0)


def _timed_grader(kept_at: list[float]) -> Any:
    """The parity grader, also noting when each group that the filter will keep was graded."""

    async def grade(group: list[Any]) -> None:
        await _grade_parity(group)
        if len({s.reward for s in group}) > 1:
            kept_at.append(time.perf_counter())

    return grade


async def run_mode(url: str, partial: bool, args: argparse.Namespace, prompts: list[list[int]],
                   figures: ModeFigures) -> None:
    """``args.rollouts`` consecutive rollouts with one buffer, as the driver runs them."""
    from kuberl.worker.rollout.balancer import EngineBalancer
    from kuberl.worker.rollout.dynamic_sampling import CollectorSettings, collect_rollout
    from kuberl.worker.rollout.engine_client import EngineClient
    from kuberl.worker.rollout.filters import check_reward_nonzero_std
    from kuberl.worker.rollout.partial_rollout_buffer import PartialRolloutBuffer

    settings = CollectorSettings(
        target_groups=args.target_groups,
        over_sampling_groups=args.target_groups * args.over_sampling,
        max_new_tokens=args.max_new_tokens,
        sampling_params={"temperature": args.temperature,
                         "stop_token_ids": list(range(STOP_BASE, STOP_BASE + args.stop_tokens))},
        partial_rollout=partial,
    )
    buffer = PartialRolloutBuffer()
    source = _group_source(prompts, args.group_size)
    endpoint = EngineBalancer([EngineClient(url)])
    try:
        for rollout_id in range(args.rollouts):
            before = {s.index: s.response_length for g in buffer.groups for s in g}
            kept_at: list[float] = []
            t0 = time.perf_counter()
            r = await collect_rollout(endpoint, rollout_id, settings, source, _timed_grader(kept_at),
                                      buffer, check_reward_nonzero_std)
            if len(kept_at) >= args.target_groups:
                figures.drain_s.append(r.wall_s - (kept_at[args.target_groups - 1] - t0))
            figures.wall_s.append(r.wall_s)
            figures.generated_tokens += r.generated_tokens
            figures.tokens_wasted += r.tokens_wasted
            figures.tokens_reused += r.tokens_reused
            figures.aborted_samples += r.aborted_samples
            figures.resumed_samples += r.resumed_samples
            figures.dropped_groups += sum(r.dropped.values())
            figures.waves += r.waves
            kept = [s.response_length for g in r.groups for s in g]
            figures.kept_tokens += sum(kept)
            figures.lengths += kept
            figures.critical_tokens.append(max(
                s.response_length - before.get(s.index, 0) for g in r.groups for s in g))
    finally:
        await endpoint.aclose()


def _pct(values: list[int], q: float) -> int:
    ordered = sorted(values)
    return ordered[round(q * (len(ordered) - 1))] if ordered else 0


def _report(args: argparse.Namespace, model_dir: Path, figures: dict[str, ModeFigures],
            load: tuple[float, float]) -> None:
    print(f"engine: embedded engine process ({args.engine_threads} thread), tiny {args.family} (hidden {args.hidden_size}, "
          f"{args.layers} layers, random init) at {model_dir}")
    print(f"workload: {args.rollouts} consecutive rollouts x {args.repeats} repeat(s) per mode; target "
          f"{args.target_groups} groups x {args.group_size} samples, over-sampling "
          f"{args.over_sampling}x ({args.target_groups * args.over_sampling} groups per wave), "
          f"max_new_tokens {args.max_new_tokens}, temperature {args.temperature}, EOS + "
          f"{args.stop_tokens} stop token ids; "
          "DAPO zero-std filter on a length-parity reward")
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.1f} before / "
          f"{load[1]:.1f} after")
    lengths = [n for f in figures.values() for n in f.lengths]
    print("kept response lengths p10/p50/p90/p99/max: "
          + "/".join(str(_pct(lengths, q)) for q in (0.1, 0.5, 0.9, 0.99, 1.0)))
    print()
    header = (f"{'partial rollout':<16}{'wall s/rollout':>15}{'generated':>11}{'wasted':>9}"
              f"{'reused':>9}{'kept':>9}{'kept len':>9}{'kept tok/s':>11}{'aborted':>9}"
              f"{'resumed':>9}{'dropped':>9}{'waves':>7}")
    print(header)
    for mode in MODES:
        f = figures[mode]
        print(f"{mode:<16}{statistics.fmean(f.wall_s):15.2f}{f.generated_tokens:11d}"
              f"{f.tokens_wasted:9d}{f.tokens_reused:9d}{f.kept_tokens:9d}"
              f"{statistics.fmean(f.lengths):9.1f}{f.kept_tokens / sum(f.wall_s):11.0f}"
              f"{statistics.fmean(f.critical_tokens):9.1f}{statistics.fmean(f.drain_s or [0]):8.2f}"
              f"{f.aborted_samples:9d}"
              f"{f.resumed_samples:9d}{f.dropped_groups:9d}{f.waves:7d}")
    print("(tokens summed over all rollouts; generated = produced by the engine, resumed continuations "
          "included; kept = response tokens handed to training, kept len = their mean per sample; critical = mean per rollout of the most "
          "tokens one kept sample generated in that rollout, about the decode steps waited for; "
          "drain s = mean seconds from the target being reached to the rollout returning)")
    off, on = figures["off"], figures["on"]
    wall_off, wall_on = statistics.fmean(off.wall_s), statistics.fmean(on.wall_s)
    saved = 1 - wall_on / wall_off
    print()
    print("per-rollout wall s, off: " + " ".join(f"{w:.2f}" for w in off.wall_s))
    print("per-rollout wall s, on : " + " ".join(f"{w:.2f}" for w in on.wall_s))
    print(f"rollout wall time with partial rollout: {wall_on / wall_off:.2f}x of without "
          f"({saved:+.1%} less; target >= 25% less: {'met' if saved >= 0.25 else 'not met'})")
    print(f"critical path with partial rollout: "
          f"{statistics.fmean(on.critical_tokens) / statistics.fmean(off.critical_tokens):.2f}x "
          "of without (decode steps, independent of machine load)")
    print(f"engine tokens per kept token: off {off.generated_tokens / max(1, off.kept_tokens):.2f}, "
          f"on {on.generated_tokens / max(1, on.kept_tokens):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=8, help="consecutive rollouts per mode")
    parser.add_argument("--repeats", type=int, default=2,
                        help="alternate off/on this many times (fresh buffer each time)")
    parser.add_argument("--target-groups", type=int, default=16, help="rollout batch size (prompts)")
    parser.add_argument("--over-sampling", type=int, default=2, help="over-sampling factor")
    parser.add_argument("--group-size", type=int, default=4, help="samples per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--stop-tokens", type=int, default=3,
                        help="how many ordinary token ids also stop a response (more: shorter tail)")
    parser.add_argument("--family", choices=["qwen2", "glm4"], default="qwen2")
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine-threads", type=int, default=1, help="the engine's torch threads")
    parser.add_argument("--model-path", type=Path, default=None, help="default: built here")
    args = parser.parse_args()

    from kuberl.worker.engine.launcher import EngineSpec, ManagedProcess, engine_command
    from kuberl.worker.tiny_model import build_tiny_model

    model_dir = args.model_path or build_tiny_model(
        Path(tempfile.mkdtemp(prefix="kuberl-bench-partial-")), args.family, seed=args.seed,
        hidden_size=args.hidden_size, num_layers=args.layers,
        max_position_embeddings=args.max_new_tokens + 64)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(model_dir).vocab_size
    # Enough distinct prompts that no mode runs out: every wave may take a full over-sampled batch.
    prompts = _prompts(args.target_groups * args.over_sampling * (args.rollouts + 2) * 4, vocab,
                       args.seed)
    spec = EngineSpec(model_path=str(model_dir), port=_free_port(), random_seed=args.seed)
    # One intra-op thread, as the engine gets under Ray locally (OMP_NUM_THREADS = the actor's 1 CPU):
    # with two OpenMP threads on a busy 2-core machine every decode step waits for a descheduled thread.
    engine = ManagedProcess(engine_command(spec), spec.url,
                            env={"OMP_NUM_THREADS": str(args.engine_threads)},
                            log_path=str(Path(tempfile.gettempdir()) / "kuberl-bench-engine.log"))
    load_before = os.getloadavg()[0]
    figures = {mode: ModeFigures() for mode in MODES}
    try:
        asyncio.run(engine.wait_ready(timeout_s=300))
        for _ in range(args.repeats):  # alternate, so both modes see the same machine load
            for mode in MODES:
                asyncio.run(run_mode(spec.url, mode == "on", args, prompts, figures[mode]))
    finally:
        engine.stop()
    _report(args, model_dir, figures, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
