"""The stack's supervised services: how each starts, how it is probed, and what happens
around a death (TC-ASYNC-076, 077, 078, 087, 102).

:class:`StackWatch` builds the :class:`~deployments.supervisor.ServiceSpec` list in start
order (store, Prefect server, worker, recovery, gateway; adding a service is one entry in
:meth:`StackWatch.specs`) and is the watchdog of the worker and the queues: it runs in the
``botai up`` process, not on the worker, so a dead or hung worker is still noticed.

* worker: alive when its process runs, is not stopped, and its heartbeat in the pool is at
  most ``worker_heartbeat_stale_s`` old (judged only once the Prefect API has answered for a
  full heartbeat period, so a server restart does not make it look hung);
* queues: per work queue the waiting runs and the oldest's age (``tasks.queue_health``); a
  queue over ``queue_max_depth`` or with a run waiting over ``queue_max_wait_s`` is alerted
  (once per ``alert_cooldown_s``);
* a worker that died or was killed as hung leaves flow-run processes: they are ended and
  their runs marked Crashed for crash recovery (``deployments.orphans``), in a thread so the
  new worker starts at once.

Alerts go through the platform's notifier (Slack/e-mail blocks, recorded in the ``alerts``
collection) built once the blocks exist; they are also kept for ``botai status``.
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import psutil

from core.exceptions import BotAIError, PrefectUnavailableError
from core.settings import Settings
from deployments import process_groups, service_records, services
from deployments.orphans import end_orphaned_flow_runs, flow_run_processes
from deployments.supervisor import PeriodicJob, ServiceSpec, Supervisor

log = logging.getLogger(__name__)

#: The recovery service (contract 3), started when its module exists.
RECOVERY_MODULE = "deployments.recovery"


def recovery_available() -> bool:
    """True when ``python -m deployments.recovery`` can run (the module exists)."""
    return importlib.util.find_spec(RECOVERY_MODULE) is not None


class AlertSink:
    """Hands supervisor alerts to the notifier in a background thread (a slow Slack or SMTP
    peer never blocks the supervision). Until :meth:`connect` succeeded alerts are only
    logged and kept for ``botai status``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.notifier: Any = None
        self.store: Any = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="supervisor-alert")

    def connect(self) -> None:
        """Build the notifier from the slack/smtp blocks and the store of the mongodb block
        (call with the stack's Prefect API in the settings context). Never raises."""
        from blocks.loader import load_block
        from blocks.mongodb import MongoDBBlock
        from tasks.notify import build_notifier

        try:
            self.store = load_block(MongoDBBlock).get_store(timeout_ms=3000)
        except BotAIError as e:
            log.warning("supervisor alerts not recorded in MongoDB: %s", e)
        try:
            self.notifier = build_notifier(self.store, self.settings)
        except BotAIError as e:
            log.warning("supervisor alerts only in botai status and the log: %s", e)

    def __call__(self, level: str, title: str, message: str, key: str) -> None:
        if self.notifier is None:
            return
        self._pool.submit(
            self.notifier.notify, level, f"botai up: {title}", message, dedupe_key=key
        )

    def close(self) -> None:
        """Wait (briefly) for alerts still being sent."""
        self._pool.shutdown(wait=True, cancel_futures=False)


class StackWatch:
    """Specs, probes and watchdog of one stack (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        *,
        gateway_env: Mapping[str, str] | None = None,
        gateway_url: str | None = None,
    ) -> None:
        self.settings = settings
        self.env = dict(env)
        self.gateway_env = dict(gateway_env) if gateway_env else None
        self.gateway_url = gateway_url
        self.sink = AlertSink(settings)
        self.supervisor = Supervisor(settings, [], self.sink, jobs=[self.cleanup_job()])
        self.supervisor.extra_state = self.extra_state
        self.pool_health: Any = None
        self.pool_error: str | None = None
        self._api_ok_since: float | None = None
        self._queue_alerted: dict[str, float] = {}
        self.orphan_reports: list[dict[str, object]] = []
        for spec in self.specs():
            self.supervisor.add(spec)

    # ------------------------------------------------------------ the services, in order
    def specs(self) -> list[ServiceSpec]:
        """Every supervised service in start order."""
        out = []
        if not self.settings.mongodb_uri:
            out.append(ServiceSpec("nx-27017", self._start_store, self._probe_store))
        out.append(ServiceSpec("prefect-server", self._start_server, self._probe_server))
        out.append(
            ServiceSpec(
                "prefect-worker", self._start_worker, self._probe_worker, self._worker_exited
            )
        )
        if recovery_available():
            out.append(ServiceSpec("recovery", self._start_recovery))
        if self.gateway_env is not None and self.gateway_url:
            out.append(ServiceSpec("api-gateway", self._start_gateway, self._probe_gateway))
        return out

    def _start_store(self) -> subprocess.Popen:
        return services.start_store_process(self.settings)

    def _start_server(self) -> subprocess.Popen:
        return services.start_prefect_server(self.settings, self.env)

    def _start_worker(self) -> subprocess.Popen:
        return services.start_worker(self.settings, self.env)

    def _start_recovery(self) -> subprocess.Popen:
        return services.spawn(
            "recovery", [sys.executable, "-m", RECOVERY_MODULE], self.env, self.settings
        )

    def _start_gateway(self) -> subprocess.Popen:
        assert self.gateway_env is not None and self.gateway_url
        proc = services.spawn(
            "api-gateway",
            [sys.executable, "-m", "api.cli", "serve"],
            self.gateway_env,
            self.settings,
        )
        try:
            services.wait_http_ok(
                f"{self.gateway_url}/health",
                self.settings.startup_timeout_s,
                proc=proc,
                what=f"HTTP gateway (see {service_records.run_dir(self.settings) / 'api-gateway.log'})",
                any_status=True,
            )
        except BotAIError:
            process_groups.kill_group(proc)
            raise
        return proc

    # ------------------------------------------------------------ probes
    def _probe_store(self) -> str | None:
        from integrations.store import Store, connect

        with Store(connect(self.settings.embedded_mongodb_uri, timeout_ms=3000), "admin") as store:
            try:
                store.ping()
            except BotAIError as e:  # the store's boundary: the client's error is the cause
                return f"no answer to ping within 3 s ({type(e.__cause__ or e).__name__})"
        return None

    def _probe_server(self) -> str | None:
        try:
            httpx.get(f"{self.settings.prefect_api_url}/health", timeout=5).raise_for_status()
        except httpx.HTTPError as e:
            self._api_ok_since = None
            return f"/api/health failed: {type(e).__name__}"
        return None

    def _probe_gateway(self) -> str | None:
        assert self.gateway_url
        try:  # any HTTP answer: the process serves (a 503 names an outage elsewhere)
            httpx.get(f"{self.gateway_url.removesuffix('/api')}/docs", timeout=5)
        except httpx.HTTPError as e:
            return f"no HTTP answer: {type(e).__name__}"
        return None

    def _probe_worker(self) -> str | None:
        """Read the pool (queues and heartbeats); the worker's reason to be unhealthy, or None
        (healthy, or unknown while the API is away)."""
        from tasks.queue_health import read_pool_health

        now = time.time()
        try:
            health = read_pool_health(self.settings, timeout_s=5.0)
        except PrefectUnavailableError as e:
            self.pool_error, self._api_ok_since = str(e), None
            return None  # the server's own probe judges the server
        self.pool_health, self.pool_error = health, None
        self._api_ok_since = self._api_ok_since or now
        self._alert_queues(health)
        worker = self.supervisor.states["prefect-worker"]
        grace = self.settings.worker_heartbeat_stale_s + self.settings.worker_heartbeat_s
        if now - self._api_ok_since < grace or now - (worker.started_at or now) < grace:
            return None
        mine = [w for w in health.workers if w.name == services.worker_name(self.settings)]
        if not mine or mine[0].heartbeat_age_s is None:
            return f"no heartbeat in work pool {self.settings.work_pool!r}"
        age = mine[0].heartbeat_age_s
        if age > self.settings.worker_heartbeat_stale_s:
            return (
                f"last heartbeat {age:.0f}s ago "
                f"(stale after {self.settings.worker_heartbeat_stale_s:g}s)"
            )
        return None

    def _alert_queues(self, health: Any) -> None:
        from tasks.queue_health import pool_problems

        now = time.time()
        for severity, text in pool_problems(health, self.settings):
            if severity == "critical":
                continue  # no live worker: the worker's own probe restarts and alerts it
            key = (
                "queue:" + text.split(":", 1)[0] + (":depth" if "runs waiting" in text else ":age")
            )
            if now - self._queue_alerted.get(key, 0.0) < self.settings.alert_cooldown_s:
                continue
            self._queue_alerted[key] = now
            self.supervisor.alert(severity, "work queue backlog", text, f"supervisor:{key}")

    # ------------------------------------------------------------ around a worker death
    def _worker_exited(self, children: list[psutil.Process]) -> None:
        # found now, before the new worker starts runs of its own; ended in a thread, so the
        # new worker does not wait for the grace time
        found = flow_run_processes(self.settings, children)

        def end() -> None:
            report = end_orphaned_flow_runs(
                self.settings, grace_s=self.settings.flow_run_stop_grace_s, found=found
            )
            if report["ended"]:
                self.orphan_reports = [*self.orphan_reports[-9:], {"at": time.time(), **report}]
                log.warning("orphaned flow runs of the dead worker: %s", report)

        threading.Thread(target=end, name="end-orphaned-flow-runs", daemon=True).start()

    # ------------------------------------------------------------ periodic clean-up
    def cleanup_job(self) -> PeriodicJob:
        """The clean-up job: files older than ``run_retention_days`` (see housekeeping)."""
        from deployments.housekeeping import clean_up

        return PeriodicJob(
            "clean-up",
            self.settings.cleanup_interval_s,
            lambda: clean_up(self.settings, self.sink.store),
            first_after_s=min(300.0, self.settings.cleanup_interval_s),
        )

    def extra_state(self) -> dict[str, Any]:
        """For the state file: the pool as last read and the orphan clean-ups."""
        return {
            "pool": self.pool_health.model_dump(mode="json") if self.pool_health else None,
            "pool_error": self.pool_error,
            "orphaned_flow_runs": self.orphan_reports,
        }
