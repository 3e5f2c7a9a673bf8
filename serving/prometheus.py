"""Prometheus for a Triton server: the scrape config, and a local Prometheus process to run it.

from plantdx.serving.prometheus import scrape_config
print(scrape_config(["10.0.0.5:8002"]))   # the YAML for prometheus.yml
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from plantdx.exceptions import ServerError


def scrape_config(
    targets: Sequence[str],
    *,
    job: str = "plantdx-triton",
    interval_s: float = 15.0,
    metrics_path: str = "/metrics",
) -> str:
    """prometheus.yml scraping Triton's metrics port at each `host:port` target."""
    if not targets:
        raise ValueError("a scrape config needs at least one host:port target")
    interval = f"{interval_s:g}s"
    doc = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": metrics_path,
                "scrape_interval": interval,
                "static_configs": [{"targets": list(targets), "labels": {"service": "plantdx"}}],
            }
        ],
    }
    return str(yaml.safe_dump(doc, sort_keys=False))


def target_of(metrics_url: str) -> str:
    """`http://host:port/metrics` → `host:port`."""
    return urllib.parse.urlsplit(metrics_url).netloc


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class PrometheusServer:
    """A throw-away Prometheus scraping the given targets (for tests and local checks)."""

    def __init__(
        self, *, targets: Sequence[str], workdir: Path, port: int, interval_s: float = 1.0
    ) -> None:
        self.targets = list(targets)
        self.workdir = Path(workdir)
        self.port = port
        self.interval_s = interval_s
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        binary = prometheus_binary()
        if binary is None:
            raise ServerError("prometheus is not installed (Debian: apt-get install prometheus)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(scrape_config(self.targets, interval_s=self.interval_s))
        self._log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServerError(f"prometheus exited with code {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"prometheus was not ready within {timeout_s:.0f} s")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API; the result vector."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.loads(resp.read())
        if body.get("status") != "success":
            raise ServerError(f"prometheus query {expr!r} failed: {body}")
        return list(body["data"]["result"])

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
