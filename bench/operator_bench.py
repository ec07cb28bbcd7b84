"""Operator benchmark: create N RLTrainingJobs at once, time apply -> RayJob created, track operator RSS.

    .venv/bin/python bench/operator_bench.py --kubeconfig PATH [--jobs 200] [--json out.json]

The operator runs as ``python -m kuberl.operator`` (a subprocess watching a fresh namespace); the jobs are
created concurrently through the API, and a watch on rayjobs records when each child appears. Latency is
measured per job from the moment its create call returned. Targets (issue 4): p99 < 2 s, RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import yaml
from kubernetes_asyncio import client, config, watch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.operator.conftest import Kubectl, OperatorProcess  # noqa: E402

EXAMPLE = REPO / "examples" / "glm4-9b-dapo-math.yaml"


class PeakRss:
    """Samples a process's resident set size every ``period`` s in a thread; keeps the peak."""

    def __init__(self, pid: int, period: float = 0.05) -> None:
        self.process, self.period, self.peak = psutil.Process(pid), period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.period)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100])."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


async def burst(kubeconfig: str, namespace: str, jobs: int, timeout: float) -> dict[str, Any]:
    """Create ``jobs`` jobs concurrently; return per-job latency to their RayJob's first watch event."""
    api_client = await config.new_client_from_config(config_file=kubeconfig)
    custom = client.CustomObjectsApi(api_client)
    template = yaml.safe_load(EXAMPLE.read_text())
    applied: dict[str, float] = {}
    seen: dict[str, float] = {}
    done = asyncio.Event()

    async def watch_rayjobs() -> None:
        w = watch.Watch()
        async with w.stream(custom.list_namespaced_custom_object, "ray.io", "v1", namespace,
                            "rayjobs", timeout_seconds=int(timeout) + 30) as stream:
            async for event in stream:
                name = event["object"]["metadata"]["name"]
                seen.setdefault(name, time.perf_counter())
                if len(seen) >= jobs:
                    done.set()
                    return

    async def create(i: int, gate: asyncio.Semaphore) -> None:
        body = {**template, "metadata": {"name": f"bench-{i:04d}", "namespace": namespace}}
        async with gate:
            await custom.create_namespaced_custom_object(
                "kuberl.io", "v1alpha1", namespace, "rltrainingjobs", body)
        applied[body["metadata"]["name"]] = time.perf_counter()

    watcher = asyncio.create_task(watch_rayjobs())
    await asyncio.sleep(0.5)  # let the watch open before the burst
    start = time.perf_counter()
    gate = asyncio.Semaphore(64)  # client-side concurrency, like many kubectl applies at once
    await asyncio.gather(*(create(i, gate) for i in range(jobs)))
    applied_all = time.perf_counter() - start
    with contextlib.suppress(TimeoutError):  # report whatever arrived in time
        await asyncio.wait_for(done.wait(), timeout)
    watcher.cancel()
    await api_client.close()
    latencies = [seen[n] - t for n, t in applied.items() if n in seen]
    return {
        "jobs": jobs,
        "rayjobs_created": len(latencies),
        "create_burst_seconds": round(applied_all, 3),
        "all_rayjobs_seconds": round(max(seen.values()) - start, 3) if seen else None,
        "latency_p50_s": round(percentile(latencies, 50), 3) if latencies else None,
        "latency_p99_s": round(percentile(latencies, 99), 3) if latencies else None,
        "latency_max_s": round(max(latencies), 3) if latencies else None,
        "latency_mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
    }


def reconcile_figures(exposition: str) -> dict[str, Any]:
    """The operator's own view: reconciles and their latency (bucket upper bounds) from /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    buckets: list[tuple[float, float]] = []
    count = 0.0
    for family in text_string_to_metric_families(exposition):
        for s in family.samples:
            if s.labels.get("result") != "ok":
                continue
            if s.name == "kuberl_operator_reconcile_duration_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "kuberl_operator_reconcile_duration_seconds_count":
                count = s.value
    buckets.sort()

    def quantile(q: float) -> float | None:
        for bound, cumulative in buckets:
            if count and cumulative >= q * count:
                return bound
        return None

    return {"reconciles_ok": int(count), "reconcile_p50_le_s": quantile(0.5),
            "reconcile_p99_le_s": quantile(0.99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"))
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the namespace afterwards")
    args = parser.parse_args(argv)
    if not args.kubeconfig:
        parser.error("--kubeconfig (or $KUBECONFIG) is required")

    kc = Kubectl(args.kubeconfig)
    kc.run("apply", "--server-side", "--force-conflicts", "-f",
           str(REPO / "crds" / "kuberl.io_rltrainingjobs.yaml"))
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kc.run("create", "namespace", namespace)
    log = Path(f"/tmp/kuberl-operator-bench-{namespace}.log")
    operator = OperatorProcess(args.kubeconfig, namespace, log, resync=30.0, bytecode=True)
    try:
        operator.start()
        assert operator.proc is not None
        process = psutil.Process(operator.proc.pid)
        idle_rss = process.memory_info().rss
        cpu_before = sum(process.cpu_times()[:2])
        rss = PeakRss(operator.proc.pid)
        figures = asyncio.run(burst(args.kubeconfig, namespace, args.jobs, args.timeout))
        time.sleep(2.0)  # status folds after the children exist also count towards the peak
        figures["operator_cpu_seconds"] = round(sum(process.cpu_times()[:2]) - cpu_before, 2)
        figures.update(reconcile_figures(operator.metrics()))
        figures["machine_load_average_1m"] = round(os.getloadavg()[0], 2)
        figures["machine_cpus"] = os.cpu_count()
        figures["operator_idle_rss_mb"] = round(idle_rss / 2**20, 1)
        figures["operator_peak_rss_mb"] = round(rss.stop() / 2**20, 1)
    finally:
        operator.stop()
        if not args.keep:
            subprocess.run([kc.binary, "--kubeconfig", args.kubeconfig, "delete", "namespace",
                            namespace, "--wait=false"], capture_output=True)
    figures["targets_met"] = bool(
        figures["rayjobs_created"] == args.jobs
        and figures["latency_p99_s"] is not None and figures["latency_p99_s"] < 2.0
        and figures["operator_peak_rss_mb"] < 200
    )
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["targets_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
