"""`kuberl plot`: the job's name, smoothed reward beside the raw one, no panel of float noise, no time travel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kuberl.errors import KuberlError
from kuberl.worker import plot


def _write(run_dir: Path, rows: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _drawn(monkeypatch: pytest.MonkeyPatch) -> dict:
    """Record what plot_run hands to matplotlib (the lines of each panel and the figure's texts)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen: dict = {}
    real = plt.Figure.savefig

    def savefig(fig, *args, **kwargs):
        seen["panels"] = {ax.get_ylabel(): [list(line.get_xdata()) for line in ax.get_lines()]
                          for ax in fig.axes}
        seen["ys"] = {ax.get_ylabel(): [list(line.get_ydata()) for line in ax.get_lines()]
                      for ax in fig.axes}
        seen["title"] = fig._suptitle.get_text() if fig._suptitle else ""
        seen["texts"] = [t.get_text() for t in fig.texts]
        return real(fig, *args, **kwargs)

    monkeypatch.setattr(plt.Figure, "savefig", savefig)
    return seen


def test_a_resumed_run_is_drawn_forward_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [{"rollout_id": i, "rollout/reward_mean": 0.1 * i, "time/step_s": 1.0 + i} for i in range(6)]
    rows += [{"rollout_id": i, "rollout/reward_mean": 0.2 * i, "time/step_s": 2.0 + i} for i in range(4, 8)]
    _write(tmp_path / "run", rows)
    seen = _drawn(monkeypatch)
    out = plot.plot_run(tmp_path / "run")
    assert out.exists() and out.stat().st_size > 0
    for lines in seen["panels"].values():
        for xs in lines:
            assert xs == sorted(xs) and len(xs) == len(set(xs)), xs


def test_title_names_the_job_and_reward_has_a_smoothed_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "somewhere"
    _write(run, [{"rollout_id": i, "rollout/reward_mean": (i % 3) * 0.1 + i * 0.01} for i in range(40)])
    (run / "job.json").write_text(json.dumps({"name": "tiny-grpo"}))
    seen = _drawn(monkeypatch)
    plot.plot_run(run)
    assert seen["title"].startswith("tiny-grpo")
    raw, smoothed = seen["ys"]["reward (train rollouts)"]
    assert len(raw) == len(smoothed) == 40
    assert max(smoothed) - min(smoothed) < max(raw) - min(raw)  # the average is calmer than the data


def test_constant_or_float_noise_series_get_no_panel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    rows = [{"rollout_id": i, "rollout/reward_mean": 0.1 * i, "train/loss": 1e-9 * (-1) ** i,
             "train/entropy": 2.0 + 1e-12 * i} for i in range(10)]
    _write(tmp_path / "run", rows)
    seen = _drawn(monkeypatch)
    plot.plot_run(tmp_path / "run")
    assert set(seen["panels"]) == {"reward (train rollouts)"}
    footer = " ".join(seen["texts"])
    assert "constant (not drawn)" in footer and "train loss" in footer and "entropy" in footer


def test_noise_rule() -> None:
    assert plot.is_noise([1e-9, -1e-9, 3e-10])
    assert plot.is_noise([2.0, 2.0 + 1e-12])
    assert not plot.is_noise([0.0, 0.5])
    assert not plot.is_noise([1.0])


def test_nothing_to_draw_is_an_error_that_says_so(tmp_path: Path) -> None:
    _write(tmp_path / "run", [{"rollout_id": i, "train/loss": 0.0} for i in range(3)])
    with pytest.raises(KuberlError, match="no metric that varies"):
        plot.plot_run(tmp_path / "run")
