"""Draw a run's curves (reward, eval, loss, KL, entropy, step time) from its metrics.jsonl into a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from kuberl.errors import KuberlError

PANELS = (
    ("rollout/reward_mean", "reward (train rollouts)"),
    ("eval/score", "eval score"),
    ("rollout/response_len_mean", "response length"),
    ("train/loss", "train loss"),
    ("train/entropy", "entropy"),
    ("time/step_s", "step time (s)"),
)


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise KuberlError(f"{path} not found: pass the run directory of `kuberl train` (runs/<job>)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_run(run_dir: Path, out: Path | None = None) -> Path:
    """Write ``<run_dir>/curves.png`` (or ``out``) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    panels = [(k, t) for k, t in PANELS if any(k in r for r in rows)]
    if not panels:
        raise KuberlError(f"{run_dir}/metrics.jsonl holds no known metric to plot")
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.2 * len(panels)), sharex=True)
    axes = [axes] if len(panels) == 1 else list(axes)
    for ax, (key, title) in zip(axes, panels, strict=True):
        xs = [r["rollout_id"] for r in rows if key in r]
        ys = [r[key] for r in rows if key in r]
        ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("rollout")
    fig.tight_layout()
    out = out or run_dir / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
