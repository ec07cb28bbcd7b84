"""Draw a dashboard's panels with matplotlib from a real Prometheus, as Grafana would lay them out.

No Grafana server can run here, so the README's dashboard picture is made this way: a real Prometheus scrapes
a live ``kuberl train`` run's metrics endpoint (``--train``), or a run's ``metrics.jsonl`` replayed step by step
into the driver's real exporter; each panel's own PromQL is then evaluated over the run with ``query_range``.

    python -m kuberl.monitoring.snapshot --train examples/tiny/job.yaml --max-rollouts 60 -o docs/images/x.png
    python -m kuberl.monitoring.snapshot runs/tiny-grpo/metrics.jsonl -o docs/images/rl-training-dashboard.png
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from kuberl.monitoring import dashboards
from kuberl.monitoring.prometheus import LocalPrometheus, free_port

UNIT_LABELS = {"s": "seconds", "percentunit": "share", "ops": "per second", "short": ""}


def load_steps(path: Path) -> list[dict[str, float]]:
    """Return the step metrics of a run's ``metrics.jsonl``, with ``progress/rollout_id`` filled in."""
    steps = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        metrics = {k: float(v) for k, v in row.items() if isinstance(v, int | float) and "/" in k}
        if "rollout_id" in row:
            metrics.setdefault("progress/rollout_id", float(row["rollout_id"]))
        steps.append(metrics)
    return steps


def replay(steps: Iterable[Mapping[str, float]], job: str, port: int = 0,
           pace_s: float = 1.0) -> tuple[LocalPrometheus, float, float]:
    """Feed ``steps`` into a real MetricsExporter, one per ``pace_s``, under a started LocalPrometheus.

    Returns the (still running) Prometheus and the replay's start and end times; the caller stops it.
    """
    from kuberl.worker.metrics import MetricsExporter

    exporter = MetricsExporter(job)
    port = exporter.serve(port, addr="127.0.0.1")
    prom = LocalPrometheus({"driver": f"127.0.0.1:{port}"}, interval="1s").start()
    start = time.time()
    last_id = -1.0
    for step in steps:
        exporter.observe(step)
        last_id = step.get("progress/rollout_id", last_id)
        time.sleep(pace_s)
    if not prom.wait_for(f'kuberl_rollout_id{{rltj="{job}"}} == {last_id}', timeout_s=60):
        prom.stop()
        raise RuntimeError(f"Prometheus did not scrape rollout {last_id} of {job} within 60 s")
    return prom, start, time.time()


def isolated_job(job_file: Path, out_dir: Path, **spec_overrides: dict[str, Any]) -> Path:
    """Write a copy of ``job_file`` whose checkpoints go to ``out_dir`` (so no earlier run is resumed), with
    ``spec_overrides`` merged into spec groups, e.g. ``rollout={"numRollout": 3}``; return its path."""
    import yaml

    job = yaml.safe_load(job_file.read_text())
    spec = job["spec"]
    spec.setdefault("checkpoint", {})["save"] = str(out_dir / "checkpoints")
    for group, values in spec_overrides.items():
        spec.setdefault(group, {}).update(values)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def train_live(job_file: Path, max_rollouts: int, run_dir: Path, timeout_s: float = 1800,
               cwd: Path | None = None) -> tuple[LocalPrometheus, str, float, float]:
    """Run ``kuberl train`` with a metrics endpoint that a started LocalPrometheus scrapes every second.

    Returns the (still running) Prometheus, the job name, and the run's start and end times.
    """
    from kuberl.api import load_jobs

    [job] = load_jobs(job_file)
    port = free_port()
    prom = LocalPrometheus({"driver": f"127.0.0.1:{port}"}, interval="1s").start()
    start = time.time()
    cmd = [sys.executable, "-m", "kuberl.cli.main", "train", str(job_file), "--metrics-port", str(port),
           "--max-rollouts", str(max_rollouts), "--no-progress", "--run-dir", str(run_dir)]
    with (run_dir.parent / f"{run_dir.name}.log").open("wb") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, cwd=cwd)
    if done.returncode != 0:
        prom.stop()
        raise RuntimeError(f"kuberl train exited {done.returncode}; log: {run_dir.parent / run_dir.name}.log")
    return prom, job.metadata.name, start, time.time()


def _legend(fmt: str, labels: Mapping[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()


def draw(prom: LocalPrometheus, board: dict[str, Any], start: float, end: float, out: Path,
         variables: Mapping[str, str] | None = None) -> list[str]:
    """Render every panel of ``board`` (Grafana JSON) from ``prom`` over [start, end] into ``out`` (PNG).

    Returns the titles of panels that had no data (empty when every query returned series).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = board["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_h = 0.42  # inches per grid row
    fig = plt.figure(figsize=(20, rows * unit_h + 0.8))
    fig.suptitle(f"{board['title']}  (rendered from Prometheus: {', '.join(variables.values()) if variables else ''})",
                 fontsize=13, x=0.01, ha="left")
    top = 1 - 0.8 / (rows * unit_h + 0.8)
    step = max(1.0, (end - start) / 200)
    empty: list[str] = []
    for panel in panels:
        pos = panel["gridPos"]
        x0, w = pos["x"] / 24, pos["w"] / 24
        y_top = top * (1 - pos["y"] / rows)
        h = top * pos["h"] / rows
        if panel["type"] == "row":
            fig.text(0.005, y_top - h / 2, panel["title"], fontsize=12, weight="bold", va="center")
            continue
        ax = fig.add_axes((x0 + 0.07 * w, y_top - h + 0.22 * h, w * 0.88, h * 0.62))
        ax.set_title(panel["title"], fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        unit = panel["fieldConfig"]["defaults"].get("unit", "short")
        exprs = [(t["expr"], t["legendFormat"]) for t in panel["targets"]]
        if panel["type"] == "stat":
            texts = []
            for expr, fmt in exprs:  # last value in the window (a finished run's series are stale at `end`)
                query = dashboards.substitute(expr, dict(variables or {}), "1m")
                for r in prom.query_range(query, start, end, step):
                    texts.append(f"{_legend(fmt, r['metric'])}: {float(r['values'][-1][1]):g}")
            ax.axis("off")
            if not texts:
                empty.append(panel["title"])
            ax.text(0.5, 0.5, "\n".join(texts) or "no data", ha="center", va="center", fontsize=11,
                    transform=ax.transAxes, color="#1f7a1f")
            continue
        curves = []
        for expr, fmt in exprs:
            query = dashboards.substitute(expr, dict(variables or {}), "1m")
            for r in prom.query_range(query, start, end, step):
                xs = [float(t) - start for t, _ in r["values"]]
                ys = [float(v) for _, v in r["values"]]
                curves.append((_legend(fmt, r["metric"]), xs, ys))
        stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {}).get("mode") == "normal"
        if stacked and curves and len({len(c[1]) for c in curves}) == 1:
            ax.stackplot(curves[0][1], *[c[2] for c in curves], labels=[c[0] for c in curves], alpha=0.8)
        else:
            for label, xs, ys in curves:
                ax.plot(xs, ys, label=label, linewidth=1.2)
        if not curves:
            empty.append(panel["title"])
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
        ax.set_ylabel(UNIT_LABELS.get(unit, unit), fontsize=7)
        ax.set_xlabel("seconds into the run", fontsize=7)
        if curves:
            ax.legend(fontsize=6, loc="best")
        ax.grid(alpha=0.3)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return empty


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberl.monitoring.snapshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("metrics_jsonl", type=Path, nargs="?", help="a run's metrics.jsonl to replay")
    parser.add_argument("--train", type=Path, default=None, help="run this job with kuberl train, live")
    parser.add_argument("--max-rollouts", type=int, default=40, help="with --train: rollouts to run")
    parser.add_argument("-o", "--out", type=Path, default=Path("docs/images/rl-training-dashboard.png"))
    parser.add_argument("--job", default=None, help="job name (default: the run directory's name)")
    parser.add_argument("--pace", type=float, default=1.0, help="seconds between replayed steps")
    parser.add_argument("--max-steps", type=int, default=60, help="replay at most this many steps (evenly)")
    args = parser.parse_args(argv)
    if args.train is not None:
        work = Path(tempfile.mkdtemp(prefix="kuberl-snapshot-"))
        job_file = isolated_job(args.train, work)
        prom, job, start, end = train_live(job_file, args.max_rollouts, work / "run")
    elif args.metrics_jsonl is not None:
        steps = load_steps(args.metrics_jsonl)
        if len(steps) > args.max_steps:
            stride = len(steps) / args.max_steps
            steps = [steps[int(i * stride)] for i in range(args.max_steps)] + [steps[-1]]
        job = args.job or args.metrics_jsonl.resolve().parent.name
        prom, start, end = replay(steps, job, pace_s=args.pace)
    else:
        parser.error("give a metrics.jsonl to replay or --train JOB.yaml")
    try:
        board = dashboards.to_grafana(dashboards.rl_training())
        empty = draw(prom, board, start, end, args.out, {"rltj": job})
        print(args.out)
        if empty:
            print(f"panels without data: {empty}", file=sys.stderr)
            return 1
    finally:
        prom.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
