"""Draw a run's curves (reward, eval, loss, KL, entropy, step time) from its metrics.jsonl into a PNG.

Rows are read with ``rollout_rows`` (one per rollout, the last run's, in order), so a resumed run never
draws a line going back in time; panels whose values are constant up to float noise are left out and
named in the footer instead of showing an axis of ``1e-9`` ticks.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kuberl.errors import KuberlError
from kuberl.worker.console import rollout_rows

PANELS = (
    ("rollout/reward_mean", "reward (train rollouts)"),
    ("eval/score", "eval score"),
    ("rollout/response_len_mean", "response length"),
    ("train/loss", "train loss"),
    ("train/entropy", "entropy"),
    ("time/step_s", "step time (s)"),
)
SMOOTHED = frozenset({"rollout/reward_mean"})
NOISE = 1e-6  # relative spread (or absolute size) below which a series carries no signal


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise KuberlError(f"{path} not found: pass the run directory of `kuberl train` (runs/<job>)")
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line from a killed run
    return rollout_rows(rows)


def job_name(run_dir: Path) -> str:
    """The job's name as the run recorded it (``job.json``), else the run directory's name."""
    try:
        return str(json.loads((run_dir / "job.json").read_text())["name"])
    except (OSError, ValueError, KeyError):
        return run_dir.resolve().name


def is_noise(values: Sequence[float]) -> bool:
    """True when a series is constant up to float rounding (or all ~0): plotting it shows only noise."""
    if len(values) < 2:
        return False
    scale = max(abs(v) for v in values)
    return scale < NOISE or (max(values) - min(values)) <= NOISE * scale


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (shorter at the start), so it never leads the data."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``<run_dir>/curves.png`` (or ``out``) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    series = {k: ([r["rollout_id"] for r in rows if k in r], [float(r[k]) for r in rows if k in r])
              for k, _ in PANELS}
    panels = [(k, t) for k, t in PANELS if series[k][0] and not is_noise(series[k][1])]
    flat = [f"{t} = {series[k][1][-1]:.3g}" for k, t in PANELS if series[k][0] and is_noise(series[k][1])]
    if not panels:
        raise KuberlError(f"{run_dir}/metrics.jsonl holds no metric that varies to plot")
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels) + 0.6), sharex=True)
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (key, title) in zip(axes, panels, strict=True):
        xs, ys = series[key]
        if key in SMOOTHED and len(ys) >= 10:
            window = max(3, len(ys) // 20)
            ax.plot(xs, ys, alpha=0.35, linewidth=1, label="raw")
            ax.plot(xs, smooth(ys, window), linewidth=2, label=f"mean of last {window}")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(title)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("rollout")
    fig.suptitle(f"{job_name(run_dir)}: {len(rows)} rollouts")
    if flat:
        fig.text(0.01, 0.005, "constant (not drawn): " + "; ".join(flat), fontsize=7)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    out = out or run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
