"""bench/rollout_throughput_bench.py runs end to end on CPU (embedded engine, tiny model) so it cannot rot."""

from __future__ import annotations

import pytest

from tests.bench.scripts import load_script


def load_bench():
    return load_script("rollout_throughput_bench", on_path=True)


def test_make_prompts_is_seeded_and_in_range():
    bench = load_bench()
    a = bench.make_prompts(3, 5, 50, seed=1)
    assert a == bench.make_prompts(3, 5, 50, seed=1) != bench.make_prompts(3, 5, 50, seed=2)
    assert all(len(p) == 5 and all(10 <= t < 50 for t in p) for p in a)


@pytest.mark.timeout(600)
def test_bench_measures_both_paths_on_the_same_load(tmp_path, capsys):
    bench = load_bench()
    out = bench.main(["--workdir", str(tmp_path), "--prompts", "3", "--group-size", "2",
                      "--prompt-len", "8", "--max-new-tokens", "12",
                      "--json", str(tmp_path / "out.json")])
    printed = capsys.readouterr().out
    assert "plain concurrent client" in printed and "driver collector" in printed
    assert "ratio collector/plain" in printed
    rounds = out["rounds"]
    assert [r["path"] for r in rounds] == ["plain", "collector"]
    # ignore_eos: both paths generated exactly requests x max_new_tokens tokens
    assert all(r["requests"] == 6 and r["tokens"] == 6 * 12 for r in rounds)
    assert out["plain_tokens_per_s"] > 0 and out["collector_tokens_per_s"] > 0
    assert out["ratio"] == pytest.approx(out["collector_tokens_per_s"] / out["plain_tokens_per_s"])
    assert (tmp_path / "out.json").is_file()
