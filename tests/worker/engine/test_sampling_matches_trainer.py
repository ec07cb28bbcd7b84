"""The embedded engine samples from the distribution the trainer scores: softmax(logits / T).

Many requests go through the real step loop (left-padded prefill of prompts of different lengths, then a
KV-cache decode step), and the empirical distribution of the first and of the second response token is
checked with a chi-square test against the trainer's ``softmax(logits / T)`` of the same model. A
temperature applied twice or not at all, or a default top-k/top-p/min-p that cuts the tail, fails it.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from kuberl.worker.engine.sampling import SamplingParams
from kuberl.worker.engine.scheduler import GenerationRequest, Scheduler

PROMPTS = [[3, 17, 42, 9], [3, 17, 42, 9, 100, 7, 55]]  # two lengths: the short one is left-padded
SAMPLES_PER_PROMPT = 6000
TEMPERATURE = 0.7


def chi_square_p(counts: Counter[int], probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of ``counts`` against ``probs`` (V,), cells with an expected count
    below ``min_expected`` pooled into one (so the asymptotic distribution holds)."""
    n = sum(counts.values())
    expected = probs.double() * n  # (V,)
    observed = torch.zeros_like(expected)
    for tok, c in counts.items():
        observed[tok] = c
    big = expected >= min_expected
    exp_cells = torch.cat([expected[big], expected[~big].sum()[None]])
    obs_cells = torch.cat([observed[big], observed[~big].sum()[None]])
    keep = exp_cells > 0
    if bool((obs_cells[~keep] > 0).any()):
        return 0.0  # a token the trainer gives probability 0 was sampled
    stat = ((obs_cells[keep] - exp_cells[keep]) ** 2 / exp_cells[keep]).sum()
    dof = int(keep.sum()) - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0, dtype=torch.float64), stat / 2.0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's tiny model (lm_head scaled at init, so its distributions are far from uniform and
    a wrong temperature shows)."""
    from kuberl.worker.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-sampling"), "glm4", seed=0)


@pytest.fixture(scope="module")
def generated(model_dir: Path) -> dict[int, list[list[int]]]:
    """prompt index -> the two-token responses the engine sampled at TEMPERATURE, default top-k/p."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sched = Scheduler(model, eos_token_ids=set(), decode_text=None, seed=1, admit_window_s=0.2)
    params = SamplingParams.from_json({"max_new_tokens": 2, "temperature": TEMPERATURE})
    total = SAMPLES_PER_PROMPT * len(PROMPTS)
    done = threading.Semaphore(0)
    reqs: list[tuple[int, GenerationRequest]] = []
    sched.start()
    try:
        for k in range(SAMPLES_PER_PROMPT):
            for i, prompt in enumerate(PROMPTS):
                req = GenerationRequest(rid=f"{i}-{k}", input_ids=prompt, params=params,
                                        on_update=lambda _r, fin: done.release() if fin else None)
                reqs.append((i, req))
                sched.submit(req)
        for _ in range(total):
            assert done.acquire(timeout=600), "the engine stopped answering"
    finally:
        sched.stop()
    out: dict[int, list[list[int]]] = {i: [] for i in range(len(PROMPTS))}
    for i, req in reqs:
        assert req.finish_reason == {"type": "length", "length": 2}
        out[i].append(req.output_ids)
    return out


def trainer_probs(model_dir: Path, tokens: list[int], temperature: float) -> torch.Tensor:
    """The trainer's next-token distribution after ``tokens``: softmax(logits / T) in fp64, (V,)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0, -1]
    return torch.softmax(logits / temperature, dim=-1)


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
def test_first_token_follows_the_trainers_tempered_softmax(model_dir, generated, prompt):
    counts = Counter(r[0] for r in generated[prompt])
    want = trainer_probs(model_dir, PROMPTS[prompt], TEMPERATURE)
    assert chi_square_p(counts, want) > 1e-4
    # The same counts reject the distributions a temperature bug would sample from.
    for wrong_t in (1.0, TEMPERATURE**2):
        assert chi_square_p(counts, trainer_probs(model_dir, PROMPTS[prompt], wrong_t)) < 1e-6


@pytest.mark.parametrize("prompt", range(len(PROMPTS)))
def test_second_token_after_a_kv_cache_step_follows_it_too(model_dir, generated, prompt):
    first = Counter(r[0] for r in generated[prompt]).most_common(1)[0][0]
    counts = Counter(r[1] for r in generated[prompt] if r[0] == first)
    want = trainer_probs(model_dir, [*PROMPTS[prompt], first], TEMPERATURE)
    assert sum(counts.values()) > 500
    assert chi_square_p(counts, want) > 1e-4
    assert chi_square_p(counts, trainer_probs(model_dir, [*PROMPTS[prompt], first], 1.0)) < 1e-6


def test_chi_square_rejects_a_truncated_tail():
    """Sanity of the statistic itself: samples with the tail cut (top-k 2) fail against the full
    distribution, samples from it pass."""
    g = torch.Generator().manual_seed(0)
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64)
    full = Counter(torch.multinomial(probs, 5000, replacement=True, generator=g).tolist())
    cut = probs.clone()
    cut[2:] = 0
    top2 = Counter(torch.multinomial(cut / cut.sum(), 5000, replacement=True, generator=g).tolist())
    assert chi_square_p(full, probs) > 1e-4
    assert chi_square_p(top2, probs) == 0.0
