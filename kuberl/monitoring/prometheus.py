"""A throwaway local Prometheus server (the real binary) scraping fixed loopback targets.

Tests and the dashboard snapshot use it to prove that the dashboards' queries return data from the real
exporters. It listens on 127.0.0.1 only, keeps its TSDB in a temporary directory, and stops on exit.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from kuberl.errors import KuberlError


class PrometheusError(KuberlError):
    """The local Prometheus could not start or answer a query."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_config(targets: Mapping[str, str], interval: str = "1s") -> dict[str, Any]:
    """Return a prometheus.yml: one static scrape job per ``{job_name: "127.0.0.1:PORT"}``."""
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": name, "static_configs": [{"targets": [target]}]}
            for name, target in targets.items()
        ],
    }


class LocalPrometheus:
    """``with LocalPrometheus({"driver": "127.0.0.1:9400"}) as prom: prom.query("up")``."""

    def __init__(self, targets: Mapping[str, str], interval: str = "1s",
                 binary: str | None = None, rule_files: tuple[Path, ...] = ()) -> None:
        found = binary or shutil.which("prometheus")
        if found is None:
            raise PrometheusError("the prometheus binary is not on PATH; run hack/install-tools.sh")
        self.binary = found
        self.targets = dict(targets)
        self.interval = interval
        self.rule_files = rule_files
        self.port = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._client = httpx.Client(timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> LocalPrometheus:
        self._dir = tempfile.TemporaryDirectory(prefix="kuberl-prometheus-")
        root = Path(self._dir.name)
        config = scrape_config(self.targets, self.interval)
        if self.rule_files:
            config["rule_files"] = [str(p) for p in self.rule_files]
        (root / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self._log = (root / "prometheus.log").open("wb")
        self._proc = subprocess.Popen(
            [self.binary, f"--config.file={root / 'prometheus.yml'}",
             f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._proc.returncode}: {self.log()[-2000:]}")
            try:
                # Ready is not enough: target updates reach the scrape manager on a 5 s tick, so wait
                # until every target has been scraped once (up or down) before anything is fed.
                if (self._client.get(f"{self.url}/-/ready").status_code == 200
                        and len(self._scraped()) == len(self.targets)):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {timeout_s} s")

    def log(self) -> str:
        return (Path(self._dir.name) / "prometheus.log").read_text() if self._dir else ""

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._dir is not None:
            self._log.close()
            self._dir.cleanup()
            self._dir = None
        self._client.close()

    def __enter__(self) -> LocalPrometheus:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _get(self, path: str, params: dict[str, Any]) -> Any:
        resp = self._client.get(f"{self.url}{path}", params=params)
        body = resp.json()
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Return the instant vector (``[{"metric": {...}, "value": [t, "v"]}]``) of ``expr``."""
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self._get("/api/v1/query", params)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [data]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """Return the matrix (``[{"metric": {...}, "values": [[t, "v"], ...]}]``) of ``expr``."""
        return self._get("/api/v1/query_range",
                         {"query": expr, "start": start, "end": end, "step": step})["result"]

    def _scraped(self) -> list[dict[str, Any]]:
        active = self._get("/api/v1/targets", {"state": "active"})["activeTargets"]
        return [t for t in active if t["health"] != "unknown"]

    def targets_up(self) -> dict[str, bool]:
        """Return scrape job -> whether its target's last scrape succeeded."""
        active = self._get("/api/v1/targets", {"state": "active"})["activeTargets"]
        return {t["labels"]["job"]: t["health"] == "up" for t in active}

    def wait_for(self, expr: str, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns a non-empty result; return it."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.25)
