"""In-pod entry point: ``python -m kuberl.worker --config /etc/kuberl/job.yaml`` (the RayJob entrypoint).

Joins the running Ray cluster, runs the driver on the operator's ConfigMap, and reports progress into the
RLTrainingJob's status. Exit code 2 means the job itself is invalid (no retry helps).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from kuberl.api import load_jobs
from kuberl.errors import KuberlError, SpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kuberl.worker", description=__doc__)
    parser.add_argument("--config", required=True, help="the RLTrainingJob manifest (ConfigMap)")
    parser.add_argument("--run-dir", type=Path, default=Path("/tmp/kuberl-run"))
    parser.add_argument("--metrics-port", type=int, default=9400)
    parser.add_argument("--ray-address", default="auto")
    parser.add_argument("--local", action="store_true", help="run without a Ray cluster (debugging)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        job = load_jobs(args.config)[0]
        from kuberl.worker.driver import DriverOptions, run_job

        run_job(job, DriverOptions(
            in_cluster=not args.local, run_dir=args.run_dir, metrics_port=args.metrics_port,
            progress_bar=False, ray_address=None if args.local else args.ray_address,
        ))
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KuberlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
