"""Packing benchmark: kuberl's dynamic-batch packer against simple baselines, on simulated lengths.

Simulation (deterministic, seed 0): 256 sequences per step whose lengths (prompt + response) are
log-normal with median 1.5k, 3k or 5k tokens and sigma 0.6, capped at 8192 (the reference workload's
maxResponseLen); budget = cp 2 x maxTokensPerGpu 4608 = 9216 tokens per micro-batch. Every rank must
run the same number of micro-batches K (collectives line up), so all schedules are scored on it:

    budget efficiency = real tokens / (dp x K x budget)      (1.0: every micro-batch slot is full)
    padded efficiency = real tokens / tokens run through the model (padding included)
    DP imbalance      = max / mean real tokens per rank       (1.0: no rank waits)
    K_lb              = Martello-Toth lower bound on micro-batches, / dp: no packer can use fewer

Baselines, measured in the same run:
    pad-max mbs=4   fixed micro-batches of 4 consecutive samples, right-padded to their longest
                    (what a padded HF forward does with dynamic batching off); round robin over ranks
    next-fit        naive in-order greedy: close a micro-batch when the next sample does not fit
    first-fit       first fit in sample order (slime's dynamic batching), round robin over ranks
    kuberl FFD (rr) first-fit decreasing, halving to a multiple of dp, round robin over ranks
    kuberl FFD+KK   balance_data: the better of FFD + equal-count Karmarkar-Karp over ranks and
                    samples-to-ranks by LPT + FFD per rank

Run: .venv/bin/python bench/packing_bench.py [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from kuberl.worker.algo.packing import first_fit, fixed_micro_batches, plan_step, token_budget

NUM_SEQUENCES = 256
MEDIANS = (1536, 3072, 5120)
SIGMA = 0.6
CAP = 8192
MAX_TOKENS_PER_GPU = 4608
CP_SIZE = 2
DP_SIZES = (1, 2, 4)
SEED = 0

Schedule = list[list[list[int]]]  # [rank][micro-batch] -> sample indices


@dataclass
class Row:
    median: int
    dp: int
    packer: str
    k: int  # micro-batches per rank (the max over ranks; others idle through the rest)
    k_lower_bound: int  # no schedule can do with fewer micro-batches per rank
    budget_eff: float
    padded_eff: float
    imbalance: float
    max_mb_tokens: int  # largest micro-batch as run (padded for pad-max)
    over_budget: int  # micro-batches that exceed the token budget
    plan_ms: float


def simulate_lengths(median: int, seed: int = SEED) -> list[int]:
    rng = random.Random(seed * 1000 + median)
    return [
        max(1, min(CAP, round(rng.lognormvariate(math.log(median), SIGMA))))
        for _ in range(NUM_SEQUENCES)
    ]


def next_fit(lengths: Sequence[int], budget: int) -> list[list[int]]:
    bins: list[list[int]] = []
    used = budget + 1
    for i, n in enumerate(lengths):
        if not bins or used + n > budget:
            bins.append([])
            used = 0
        bins[-1].append(i)
        used += n
    return bins


def first_fit_in_order(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """slime's packer: first fit in arrival order (no sorting)."""
    return first_fit(range(len(lengths)), lengths, budget)


def round_robin(bins: list[list[int]], dp: int) -> Schedule:
    return [bins[r::dp] for r in range(dp)]


def lower_bound(lengths: Sequence[int], budget: int, dp: int) -> int:
    """Martello-Toth L2 bound on the number of micro-batches, spread over dp ranks.

    For each threshold k: samples over budget - k each need a micro-batch of their own, as do those
    over budget / 2; samples in [k, budget / 2] can only fill what the latter leave free.
    """
    bins = math.ceil(sum(lengths) / budget)
    for k in sorted({0, *(n for n in lengths if n <= budget // 2)}):
        alone = [n for n in lengths if n > budget - k]
        halves = [n for n in lengths if budget - k >= n > budget / 2]
        small = sum(n for n in lengths if budget / 2 >= n >= k)
        free = len(halves) * budget - sum(halves)
        bins = max(bins, len(alone) + len(halves) + max(0, math.ceil((small - free) / budget)))
    return math.ceil(bins / dp)


def score(
    name: str,
    median: int,
    dp: int,
    schedule: Schedule,
    lengths: Sequence[int],
    budget: int,
    padded: bool,
    plan_ms: float,
) -> Row:
    k = max(len(rank) for rank in schedule)
    real = sum(lengths)

    def run_tokens(mb: list[int]) -> int:
        if not mb:
            return 0
        return len(mb) * max(lengths[i] for i in mb) if padded else sum(lengths[i] for i in mb)

    mbs = [mb for rank in schedule for mb in rank]
    rank_tokens = [sum(lengths[i] for mb in rank for i in mb) for rank in schedule]
    return Row(
        median=median,
        dp=dp,
        packer=name,
        k=k,
        k_lower_bound=lower_bound(lengths, budget, dp),
        budget_eff=real / (dp * k * budget),
        padded_eff=real / sum(run_tokens(mb) for mb in mbs),
        imbalance=max(rank_tokens) / (sum(rank_tokens) / dp),
        max_mb_tokens=max(run_tokens(mb) for mb in mbs),
        over_budget=sum(run_tokens(mb) > budget for mb in mbs),
        plan_ms=plan_ms,
    )


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, (time.perf_counter() - start) * 1000


def run() -> list[Row]:
    budget = token_budget(MAX_TOKENS_PER_GPU, CP_SIZE)
    rows: list[Row] = []
    for median in MEDIANS:
        lengths = simulate_lengths(median)
        for dp in DP_SIZES:
            bins, ms = timed(fixed_micro_batches, len(lengths), 4)
            rows.append(
                score("pad-max mbs=4", median, dp, round_robin(bins, dp), lengths, budget, True, ms)
            )
            bins, ms = timed(next_fit, lengths, budget)
            rows.append(
                score("next-fit", median, dp, round_robin(bins, dp), lengths, budget, False, ms)
            )
            bins, ms = timed(first_fit_in_order, lengths, budget)
            rows.append(
                score("first-fit", median, dp, round_robin(bins, dp), lengths, budget, False, ms)
            )
            for balance in (False, True):
                plan, ms = timed(
                    plan_step,
                    lengths,
                    dp_size=dp,
                    max_tokens_per_gpu=MAX_TOKENS_PER_GPU,
                    cp_size=CP_SIZE,
                    balance_data=balance,
                )
                schedule = [[list(mb) for mb in rank] for rank in plan.ranks]
                name = "kuberl FFD+KK" if balance else "kuberl FFD (rr)"
                rows.append(score(name, median, dp, schedule, lengths, budget, False, ms))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print rows as JSON lines")
    args = parser.parse_args()
    rows = run()
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row)))
        return
    budget = token_budget(MAX_TOKENS_PER_GPU, CP_SIZE)
    print(
        f"{NUM_SEQUENCES} sequences, log-normal sigma {SIGMA}, cap {CAP}, budget {budget} "
        f"(cp {CP_SIZE} x {MAX_TOKENS_PER_GPU})"
    )
    header = (
        f"{'median':>6} {'dp':>2} {'packer':<16} {'K/rank':>6} {'K_lb':>4} {'budget_eff':>10} "
        f"{'padded_eff':>10} {'dp_imbal':>8} {'max_mb_tok':>10} {'>budget':>7} {'ms':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.median:>6} {r.dp:>2} {r.packer:<16} {r.k:>6} {r.k_lower_bound:>4} {r.budget_eff:>10.3f} "
            f"{r.padded_eff:>10.3f} {r.imbalance:>8.4f} {r.max_mb_tokens:>10} "
            f"{r.over_budget:>7} {r.plan_ms:>6.1f}"
        )


if __name__ == "__main__":
    main()
