"""A real Prometheus server for tests: loopback only, a temporary data folder, stopped on exit.

``running_prometheus(targets, rules, folder)`` starts ``/usr/bin/prometheus`` (Debian package
``prometheus``; scripts/test.sh installs it) scraping ``targets`` (job -> ["host:port"])
every second and evaluating ``rules`` every second, and yields a :class:`Prometheus`
client of its HTTP API.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.peers import free_port

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

#: Skips a test where the OS package is missing (scripts/test.sh installs it where it can).
needs_prometheus = pytest.mark.skipif(
    not (Path(PROMETHEUS).exists() and Path(PROMTOOL).exists()),
    reason="missing OS packages: prometheus (install them, e.g. apt-get install prometheus)",
)


@dataclass
class Prometheus:
    """Client of a running Prometheus's HTTP API."""

    url: str
    log: Path

    def _get(self, path: str, **params: Any) -> Any:
        resp = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        resp.raise_for_status()
        body = resp.json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query. Returns the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        return self._get("/api/v1/query", query=expr)["result"]

    def value(self, expr: str) -> float | None:
        """The value of a query that yields one series (None: no series)."""
        result = self.query(expr)
        assert len(result) <= 1, f"{expr} gave {len(result)} series: {result}"
        return float(result[0]["value"][1]) if result else None

    def latest(self, expr: str, window_s: int = 30) -> float | None:
        """The newest value of a selector ``expr`` within ``window_s`` (one series): scrapes
        that failed on a loaded machine (a few in a row) do not hide the value scraped before."""
        return self.value(f"last_over_time({expr}[{window_s}s])")

    def alerts(self) -> list[dict]:
        """Active alerts (pending and firing) with their labels and ``state``."""
        return self._get("/api/v1/alerts")["alerts"]

    def firing(self, name: str) -> list[dict]:
        """Labels of the firing alerts called ``name``."""
        return [
            a["labels"]
            for a in self.alerts()
            if a["labels"].get("alertname") == name and a["state"] == "firing"
        ]

    def targets(self) -> list[dict]:
        """Active scrape targets (``health``, ``lastError``, ``labels``)."""
        return self._get("/api/v1/targets")["activeTargets"]

    def wait(self, what: str, probe: Callable[[], Any], timeout_s: float = 60) -> Any:
        """Poll ``probe`` until it returns a truthy value. Returns it.

        Raises:
            AssertionError: ``timeout_s`` passed (with the end of Prometheus's log).
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.5)
        raise AssertionError(
            f"timed out after {timeout_s} s waiting for {what}; targets: {self.targets()}; "
            f"log: {self.log.read_text()[-2000:]}"
        )


@contextlib.contextmanager
def running_prometheus(
    targets: dict[str, list[str]],
    rules: Path,
    folder: Path,
    *,
    intervals_s: dict[str, int] | None = None,
    startup_s: float = 60,
) -> Iterator[Prometheus]:
    """Prometheus on 127.0.0.1 (free port) with its data in ``folder``, scraping every
    second (``intervals_s``: job -> seconds, interval and timeout, for slower targets) and
    evaluating ``rules`` every second, until the block ends (SIGTERM, SIGKILL after 10 s).

    Raises:
        AssertionError: it did not become ready within ``startup_s``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": f"{(intervals_s or {}).get(job, 1)}s",
                "scrape_timeout": f"{(intervals_s or {}).get(job, 1)}s",
                "static_configs": [{"targets": hosts}],
            }
            for job, hosts in targets.items()
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = folder / "prometheus.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--web.enable-lifecycle",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            assert proc.poll() is None, f"prometheus exited: {log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"prometheus not ready: {log.read_text()[-3000:]}"
            time.sleep(0.3)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
