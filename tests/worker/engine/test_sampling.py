from __future__ import annotations

import pytest
import torch

from kuberl.worker.engine.sampling import SamplingParams, SamplingParamsError, choose_tokens


def gens(n: int, seed: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def test_greedy_takes_argmax_and_reports_unscaled_logprob():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 0.5]])
    tokens, lps = choose_tokens(logits, [SamplingParams(temperature=0.0)] * 2, gens(2))
    assert tokens.tolist() == [1, 0]
    assert torch.allclose(lps, torch.log_softmax(logits, -1)[[0, 1], [1, 0]])


def test_logprob_is_under_the_temperature_scaled_distribution_before_filtering():
    logits = torch.randn(1, 50)
    p = SamplingParams(temperature=0.5, top_k=3, top_p=0.5)
    tok, lp = choose_tokens(logits, [p], gens(1))
    assert torch.allclose(lp, torch.log_softmax(logits / 0.5, -1)[0, tok])


def test_original_logprobs_ignore_the_temperature():
    logits = torch.randn(1, 50)
    tok, lp = choose_tokens(logits, [SamplingParams(temperature=0.5)], gens(1),
                            original_logprobs=True)
    assert torch.allclose(lp, torch.log_softmax(logits, -1)[0, tok])


@pytest.mark.parametrize("params", [SamplingParams(top_k=2), SamplingParams(top_p=0.6),
                                    SamplingParams(min_p=0.5)])
def test_filters_only_sample_from_the_allowed_tokens(params):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = {int(choose_tokens(logits, [params], gens(1, s))[0]) for s in range(200)}
    assert seen == {0, 1}


def test_batched_draw_respects_each_rows_filters():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 3))
    params = [SamplingParams(top_k=1, temperature=1.0), SamplingParams(top_p=0.6),
              SamplingParams(min_p=0.2)]
    rng = torch.Generator().manual_seed(0)
    seen = [set(), set(), set()]
    for _ in range(300):
        tokens, _ = choose_tokens(logits, params, [None] * 3, generator=rng)
        for row, t in enumerate(tokens.tolist()):
            seen[row].add(t)
    assert seen == [{0}, {0, 1}, {0, 1, 2}]


def test_banned_tokens_are_never_chosen():
    logits = torch.tensor([[10.0, 0.0, 0.0]])
    tok, _ = choose_tokens(logits, [SamplingParams(temperature=0.0)], gens(1), banned=[[0]])
    assert int(tok) != 0


def test_same_generator_seed_gives_same_tokens():
    logits = torch.randn(4, 100)
    params = [SamplingParams(temperature=1.0)] * 4
    assert torch.equal(choose_tokens(logits, params, gens(4, 7))[0],
                       choose_tokens(logits, params, gens(4, 7))[0])


@pytest.mark.parametrize(("raw", "message"), [
    ({"temperature": -0.1}, "temperature"), ({"top_p": 0}, "top_p"), ({"top_k": 0}, "top_k"),
    ({"max_new_tokens": -1}, "max_new_tokens"), ({"min_new_tokens": 9, "max_new_tokens": 4},
                                                 "min_new_tokens"),
])
def test_out_of_range_parameters_are_rejected(raw, message):
    with pytest.raises(SamplingParamsError, match=message):
        SamplingParams.from_json(raw)


def test_stop_accepts_a_string_and_unknown_keys_are_ignored():
    p = SamplingParams.from_json({"stop": "###", "json_schema": None, "spaces_between_special_tokens": False})
    assert p.stop == ["###"] and p.max_new_tokens == 128
