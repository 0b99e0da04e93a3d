"""The metrics endpoint of a worker host, served by the warm worker process itself.

``BOTAI_WORKER_METRICS_PORT`` (0: off) on ``BOTAI_HOST``; ``GET /metrics`` answers the
Prometheus text format (``BOTAI_METRICS_TOKEN`` set: only with that bearer token). Served:

* runs this worker started (``botai_worker_runs_started_total``), ended by outcome
  (``botai_worker_runs_finished_total{outcome="ok"|"error"}``) and in flight now;
* its processes, read at scrape time: the worker's own memory (prometheus_client's
  ``process_*``), the fork server (up, RSS) and the flow-run processes (count, summed RSS:
  pages shared with the fork server are counted in each child's RSS);
* with ``BOTAI_WORKER_METRICS_PLATFORM=true`` also the platform metrics
  (:class:`deployments.metrics.PlatformCollector`), for a stack without the gateway.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.settings import Settings, load_settings


def _rss(proc: psutil.Process) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:
        return 0


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class WorkerProcessCollector(Collector):
    """The worker's fork server and flow-run processes, read with psutil at scrape time.

    Args:
        worker_pid: the worker process.
        fork_server_pid: returns the fork server's pid (None while none runs).
    """

    def __init__(self, worker_pid: int, fork_server_pid: Callable[[], int | None]) -> None:
        self.worker_pid = worker_pid
        self.fork_server_pid = fork_server_pid

    def describe(self) -> list[Metric]:
        return []

    def flow_run_processes(self) -> list[psutil.Process]:
        """Live flow-run processes of this worker: the fork server's children and the
        worker's own children running ``prefect.engine`` (runs started the stock way)."""
        out: list[psutil.Process] = []
        pid = self.fork_server_pid()
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                out.extend(psutil.Process(pid).children())
        try:
            for child in psutil.Process(self.worker_pid).children():
                try:
                    if child.pid != pid and "prefect.engine" in " ".join(child.cmdline()):
                        out.append(child)
                except psutil.Error:
                    continue
        except psutil.Error:
            pass
        return [p for p in out if _alive(p)]

    def collect(self) -> Iterator[Metric]:
        """Yield the fork server's and the flow-run processes' figures."""
        pid = self.fork_server_pid()
        server = psutil.Process(pid) if pid is not None and psutil.pid_exists(pid) else None
        up = GaugeMetricFamily("botai_fork_server_up", "1 while the worker's fork server runs.")
        up.add_metric([], float(server is not None and _alive(server)))
        yield up
        rss = GaugeMetricFamily(
            "botai_fork_server_rss_bytes", "Resident memory of the fork server."
        )
        if server is not None:
            rss.add_metric([], float(_rss(server)))
        yield rss
        runs = self.flow_run_processes()
        count = GaugeMetricFamily("botai_flow_run_processes", "Flow-run processes running now.")
        count.add_metric([], float(len(runs)))
        yield count
        total = GaugeMetricFamily(
            "botai_flow_run_rss_bytes",
            "Summed resident memory of the flow-run processes (shared pages counted per process).",
        )
        total.add_metric([], float(sum(_rss(p) for p in runs)))
        yield total
        host = GaugeMetricFamily(
            "botai_host_memory_available_bytes", "Memory available on the worker host."
        )
        host.add_metric([], float(psutil.virtual_memory().available))
        yield host


class WorkerMetrics:
    """The registry of one worker process and the counters its runs update."""

    def __init__(self, fork_server_pid: Callable[[], int | None], worker_pid: int | None = None):
        self.registry = CollectorRegistry()
        self.runs_started = Counter(
            "botai_worker_runs_started",
            "Flow runs this worker started.",
            registry=self.registry,
        )
        self.runs_finished = Counter(
            "botai_worker_runs_finished",
            "Flow runs of this worker whose process ended (ok: exit code 0).",
            ["outcome"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "botai_worker_runs_in_flight", "Flow runs this worker runs now.", registry=self.registry
        )
        pid = worker_pid or os.getpid()
        ProcessCollector(pid=lambda: pid, registry=self.registry)
        self.registry.register(WorkerProcessCollector(pid, fork_server_pid))

    def run_started(self) -> None:
        """Count a run handed to this worker's process starter."""
        self.runs_started.inc()
        self.in_flight.inc()

    def run_finished(self, ok: bool) -> None:
        """Count a run whose process ended (``ok``: exit code 0)."""
        self.runs_finished.labels(outcome="ok" if ok else "error").inc()
        self.in_flight.dec()

    def add(self, collectors: Iterable[Collector]) -> None:
        """Serve ``collectors`` too (the platform metrics)."""
        for c in collectors:
            self.registry.register(c)


def token_guard(app: Callable, token: str | None) -> Callable:
    """WSGI ``app`` answering 401 unless the request carries ``Bearer <token>`` (``token``
    None: ``app`` itself)."""
    if not token:
        return app
    expected = f"Bearer {token}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        sent = environ.get("HTTP_AUTHORIZATION", "").encode()
        if not hmac.compare_digest(sent, expected):
            start_response(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"metrics need 'Authorization: Bearer <BOTAI_METRICS_TOKEN>'\n"]
        return app(environ, start_response)

    return guarded


def serve_worker_metrics(metrics: WorkerMetrics, settings: Settings) -> Any:
    """Serve ``metrics`` on ``settings.host:settings.worker_metrics_port`` from a daemon
    thread (``/metrics``; the token of ``settings.metrics_token`` when set).

    Returns the HTTP server (``shutdown()`` stops it).

    Raises:
        ValueError: ``worker_metrics_port`` is 0 (off).
        OSError: the port is taken.
    """
    from wsgiref.simple_server import make_server

    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    if not settings.worker_metrics_port:
        raise ValueError("BOTAI_WORKER_METRICS_PORT is 0 (off): set a port to serve metrics")
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    app = token_guard(make_wsgi_app(metrics.registry), token)
    server = make_server(
        settings.host,
        settings.worker_metrics_port,
        app,
        ThreadingWSGIServer,
        handler_class=_SilentHandler,
    )
    threading.Thread(target=server.serve_forever, name="botai-worker-metrics", daemon=True).start()
    return server


def start_worker_metrics(settings: Settings | None = None) -> WorkerMetrics | None:
    """Serve this worker's metrics when ``settings.worker_metrics_port`` is set (with the
    platform metrics when ``worker_metrics_platform``), from the calling process.

    Returns the :class:`WorkerMetrics` the worker updates, or None when the port is 0 (a
    port that cannot be bound is logged as an error: the worker runs on without it).
    """
    import logging

    from deployments.fork_server import fork_server_pid

    settings = settings or load_settings()
    if not settings.worker_metrics_port:
        return None
    metrics = WorkerMetrics(fork_server_pid)
    if settings.worker_metrics_platform:
        from deployments.metrics import PlatformCollector

        opened: list[Any] = []

        def store() -> Any:  # the block is read once; a failure is tried again next scrape
            from blocks.loader import load_store

            if not opened:
                ms = int(settings.metrics_timeout_s * 1000)
                opened.append(
                    load_store(retry_s=0, timeout_ms=ms, socket_timeout_ms=ms, settings=settings)
                )
            return opened[0]

        metrics.add([PlatformCollector(settings, store)])
    log = logging.getLogger(__name__)
    try:
        serve_worker_metrics(metrics, settings)
    except OSError as e:  # a taken port must not keep the worker from serving runs
        log.error(
            "worker metrics not served: %s:%d: %s (set BOTAI_WORKER_METRICS_PORT to a free "
            "port, or 0)",
            settings.host,
            settings.worker_metrics_port,
            e,
        )
        return metrics
    log.info("worker metrics on http://%s:%d/metrics", settings.host, settings.worker_metrics_port)
    return metrics
