"""bench/grpo_step_vs_trl.py: the pure parts that make the race fair and decide the learning result."""

from __future__ import annotations

from tests.bench.scripts import load_script


def load_bench():
    return load_script("grpo_step_vs_trl")


def test_trl_gets_the_largest_micro_batch_that_fits_kuberls_token_budget():
    bench = load_bench()
    assert bench.trl_micro_batch(256, 16, 4096) == (256, 1)  # the whole batch fits
    assert bench.trl_micro_batch(256, 140, 4096) == (16, 16)  # 29 fit; 16 divides 256
    assert bench.trl_micro_batch(64, 5000, 4096) == (1, 64)  # not even one: one sample each
    size, steps = bench.trl_micro_batch(96, 100, 4096)
    assert size * steps == 96 and size * 100 <= 4096 and size == 32


def test_steps_to_target_is_the_first_full_window_whose_mean_reaches_it():
    bench = load_bench()
    assert bench._to_target([1.0] * 9, 0.9) is None  # no full window yet
    assert bench._to_target([1.0] * 10, 0.9) == 10
    assert bench._to_target([0.0] * 5 + [1.0] * 20, 0.9) == 14  # steps 5..14: one 0, nine 1s
    assert bench._to_target([0.5] * 30, 0.9) is None
