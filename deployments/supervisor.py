"""Supervision of the stack's processes: restart with exponential backoff, never tear down.

A :class:`Supervisor` owns an ordered list of :class:`ServiceSpec` (store, Prefect server,
worker, recovery, gateway). Each ``start`` spawns the process (recorded in the pid file),
on the same port and data folder as before, and waits until it is ready, so the start order
and the readiness waits of ``botai up`` also hold for restarts. :meth:`Supervisor.tick`,
called every ``supervisor_poll_s``:

* a service whose process exited is logged with its exit code, its ``on_exit`` runs (the
  worker's orphaned flow runs are ended), and it is started again after
  ``restart_backoff_initial_s`` doubling up to ``restart_backoff_max_s``; the backoff starts
  over once it ran ``restart_stable_after_s``;
* every ``watchdog_interval_s`` each ``probe`` runs; a service stopped (SIGSTOP) or failing its
  probe for ``service_hung_after_s`` is hung: alerted, killed (SIGKILL) and restarted;
* ``restart_alert_failures`` deaths or failed starts within ``restart_alert_window_s`` raise a
  critical alert (the supervisor keeps trying at the longest backoff);
* periodic jobs (clean-up) run on their own intervals.

Every tick writes ``<state_dir>/run/supervisor.json`` (pid, restarts, uptime, last exit code,
status, recent alerts) for ``botai status``. Why hand-written and not supervisord or circus:
see docs/monitoring.md ("Supervisor").
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from core.settings import Settings
from deployments.process_groups import kill_group

log = logging.getLogger(__name__)

#: (level, title, message, dedupe key) -> None; must not raise or block long.
AlertFn = Callable[[str, str, str, str], None]

#: Alerts kept in the state file for ``botai status``.
KEPT_ALERTS = 20


@dataclass
class ServiceSpec:
    """How to start and judge one supervised service.

    Attributes:
        start: spawn the process (recorded in the pid file) and wait until it is ready;
            returns the child. Raises when it did not become ready.
        probe: () -> None when healthy or unknown, else the reason it is unhealthy.
        on_exit: called with the service's last known descendants after its process ended
            (by itself or killed as hung), before it is started again.
    """

    name: str
    start: Callable[[], subprocess.Popen]
    probe: Callable[[], str | None] | None = None
    on_exit: Callable[[list[psutil.Process]], None] | None = None


@dataclass
class ServiceState:
    """What the supervisor knows of one service (written to the state file)."""

    name: str
    status: str = "starting"  # running | restarting | hung | stopped
    pid: int | None = None
    started_at: float | None = None  # epoch seconds of the current process's start
    restarts: int = 0
    last_exit_code: int | None = None
    last_exit_at: float | None = None
    last_error: str | None = None
    failures: list[float] = field(default_factory=list)  # deaths/failed starts in the window
    consecutive_failures: int = 0
    next_start_at: float | None = None
    unhealthy_since: float | None = None
    failing_alerted: bool = False


@dataclass
class PeriodicJob:
    """A job the supervisor runs every ``every_s`` (first run ``first_after_s`` after start)."""

    name: str
    every_s: float
    run: Callable[[], str]  # returns a one-line summary
    first_after_s: float = 60.0
    next_at: float = 0.0
    last_summary: str | None = None
    last_run_at: float | None = None


def state_path(settings: Settings) -> Path:
    """``<state_dir>/run/supervisor.json``: the supervisor's view, read by ``botai status``."""
    return settings.state_dir / "run" / "supervisor.json"


def read_state(settings: Settings) -> dict[str, Any]:
    """The last state the supervisor wrote (``{}`` when none or unreadable)."""
    try:
        return json.loads(state_path(settings).read_text())
    except (OSError, ValueError):
        return {}


def backoff_s(consecutive_failures: int, settings: Settings) -> float:
    """Wait before the next start after ``consecutive_failures`` (>= 1) deaths in a row:
    initial * 2**(n-1), at most ``restart_backoff_max_s``. Returns seconds."""
    n = max(1, consecutive_failures)
    return min(settings.restart_backoff_max_s, settings.restart_backoff_initial_s * 2 ** (n - 1))


def _exit_code(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    with contextlib.suppress(Exception):
        return proc.poll()
    return None


def _gone(proc: Any) -> bool:
    """True when an adopted process (not our child: ``poll`` cannot tell) has ended."""
    gone = getattr(proc, "gone", None)
    return bool(gone is not None and gone())


def _stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_STOPPED
    except psutil.Error:
        return False


class Supervisor:
    """Keeps the services of ``specs`` running (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        specs: list[ServiceSpec],
        alert: AlertFn,
        jobs: list[PeriodicJob] | None = None,
    ) -> None:
        self.settings = settings
        self.specs = {s.name: s for s in specs}
        self.states = {s.name: ServiceState(s.name) for s in specs}
        self.procs: dict[str, subprocess.Popen] = {}
        self.children: dict[str, list[psutil.Process]] = {}
        self.alert_fn = alert
        self.alerts: list[dict[str, Any]] = []
        self.jobs = jobs or []
        self.started_at = time.time()
        self.extra_state: Callable[[], dict[str, Any]] | None = None  # merged into snapshot
        self._next_probe_at = 0.0
        for job in self.jobs:
            job.next_at = self.started_at + job.first_after_s

    # ------------------------------------------------------------ starting
    def add(self, spec: ServiceSpec) -> None:
        """Supervise one more service (after those already added, in start order)."""
        self.specs[spec.name] = spec
        self.states.setdefault(spec.name, ServiceState(spec.name))

    def launch(self, name: str) -> subprocess.Popen:
        """Start service ``name`` for the first time and supervise it from now on.

        Returns the child. Raises whatever its ``start`` raises (start-up then fails).
        """
        proc = self.specs[name].start()
        self._started(name, proc)
        self.write_state()  # botai status shows it during start-up already
        return proc

    def adopt(self, name: str, proc: Any) -> None:
        """Supervise ``proc``, a process of service ``name`` an earlier ``botai up`` left
        running (:class:`deployments.adoption.AdoptedProcess`), as if this one started it."""
        self._started(name, proc)
        self.states[name].started_at = getattr(proc, "create_time", None) or time.time()

    def launch_later(self, name: str, why: str) -> None:
        """Have the loop start ``name`` with backoff (a start that failed for ``why``)."""
        self._failed(name, why)

    def _started(self, name: str, proc: subprocess.Popen) -> None:
        st = self.states[name]
        self.procs[name] = proc
        st.pid, st.started_at, st.status = proc.pid, time.time(), "running"
        st.next_start_at, st.unhealthy_since = None, None

    # ------------------------------------------------------------ alerts
    def alert(self, level: str, title: str, message: str, key: str) -> None:
        """Log the alert, keep it for ``botai status`` and hand it to the alert function."""
        (log.error if level == "critical" else log.warning)("%s: %s", title, message)
        self.alerts = [
            *self.alerts[-(KEPT_ALERTS - 1) :],
            {"at": time.time(), "level": level, "title": title, "message": message},
        ]
        try:
            self.alert_fn(level, title, message, key)
        except Exception as e:  # an alert channel must never stop the supervision
            log.warning("alert %r not handed over: %s", title, e)

    # ------------------------------------------------------------ the loop
    def run(self, should_stop: Callable[[], bool] = lambda: False) -> None:
        """Tick every ``supervisor_poll_s`` until ``should_stop()`` (or a signal raises)."""
        while not should_stop():
            try:
                self.tick()
            except Exception:  # a bug or a full disk in one round must not end supervision
                log.exception(
                    "supervisor round failed; next round in %gs", self.settings.supervisor_poll_s
                )
            time.sleep(self.settings.supervisor_poll_s)

    def tick(self) -> None:
        """One round: notice deaths, probe (when due), restart (when due), run due jobs,
        write the state file."""
        now = time.time()
        probe_due = now >= self._next_probe_at
        if probe_due:
            self._next_probe_at = now + self.settings.watchdog_interval_s
        for name in list(self.specs):
            self._check(name, probe_due)
        for job in self.jobs:
            if time.time() >= job.next_at:
                self._run_job(job)
        self.write_state()

    def _check(self, name: str, probe_due: bool) -> None:
        st, proc = self.states[name], self.procs.get(name)
        now = time.time()
        if st.status == "running" and proc is not None:
            code = _exit_code(proc)
            if code is None and not _gone(proc):
                with contextlib.suppress(psutil.Error):
                    self.children[name] = psutil.Process(proc.pid).children(recursive=True)
                if st.started_at and now - st.started_at >= self.settings.restart_stable_after_s:
                    st.consecutive_failures = 0
                    st.failing_alerted = False
                if probe_due:
                    self._probe(name)
                return
            how = f"with code {code}" if code is not None else "(adopted: exit code unknown)"
            self._died(name, code, f"exited on its own {how}")
        if st.status in ("restarting", "hung") and (st.next_start_at or 0) <= time.time():
            self._restart(name)

    def _probe(self, name: str) -> None:
        st, spec, proc = self.states[name], self.specs[name], self.procs[name]
        reason = "stopped (SIGSTOP): not scheduled" if _stopped(proc.pid) else None
        if reason is None and spec.probe is not None:
            try:
                reason = spec.probe()
            except Exception as e:  # a probe bug must not kill the supervisor
                log.warning("probe of %s failed: %s", name, e)
        if reason is None:
            st.unhealthy_since = None
            return
        now = time.time()
        if st.unhealthy_since is None:
            st.unhealthy_since = now
            log.warning("%s (pid %d) unhealthy: %s", name, proc.pid, reason)
        if now - st.unhealthy_since < self.settings.service_hung_after_s:
            return
        self.alert(
            "critical",
            f"{name} hung: killed and restarted",
            f"{name} (pid {proc.pid}) unhealthy for {now - st.unhealthy_since:.0f}s: {reason}",
            f"supervisor:{name}:hung",
        )
        kill_group(proc)
        self._died(name, _exit_code(proc), f"hung ({reason}); killed", hung=True)

    def _died(self, name: str, code: int | None, why: str, *, hung: bool = False) -> None:
        st, spec, proc = self.states[name], self.specs[name], self.procs.pop(name, None)
        now = time.time()
        uptime = now - (st.started_at or now)
        if proc is not None:
            kill_group(proc)  # what is left of its group (a server's own children)
        st.last_exit_code = _exit_code(proc) if code is None else code
        st.last_exit_at, st.last_error, st.pid = now, why, None
        if not hung:
            self.alert(
                "warning",
                f"{name} died: restarting",
                f"{name} (pid {proc.pid if proc else '?'}) {why} after {uptime:.0f}s up; "
                f"log {Path(self.settings.state_dir) / 'run'}",
                f"supervisor:{name}:died",
            )
        if spec.on_exit is not None:
            try:
                spec.on_exit(self.children.pop(name, []))
            except Exception as e:
                log.warning("clean-up after %s failed: %s", name, e)
        self._failed(name, why)

    def _failed(self, name: str, why: str) -> None:
        st = self.states[name]
        now = time.time()
        window = self.settings.restart_alert_window_s
        st.failures = [t for t in st.failures if now - t <= window] + [now]
        st.consecutive_failures += 1
        wait_s = backoff_s(st.consecutive_failures, self.settings)
        st.status, st.next_start_at = "restarting", now + wait_s
        log.warning("%s: %s; next start in %.1f s", name, why, wait_s)
        if len(st.failures) >= self.settings.restart_alert_failures and not st.failing_alerted:
            st.failing_alerted = True
            self.alert(
                "critical",
                f"{name} keeps failing",
                f"{name}: {len(st.failures)} deaths or failed starts within {window:.0f}s "
                f"(last: {why}); still retrying every {self.settings.restart_backoff_max_s:.0f}s "
                "at most; see `botai status` and its log",
                f"supervisor:{name}:failing",
            )

    def _restart(self, name: str) -> None:
        st = self.states[name]
        log.info("restarting %s (restart %d)", name, st.restarts + 1)
        try:
            proc = self.specs[name].start()
        except Exception as e:  # start-up failed: count it and back off further
            self._failed(name, f"restart failed: {e}")
            st.last_error = f"restart failed: {e}"
            return
        st.restarts += 1  # successful restarts; failed attempts count in ``failures``
        self._started(name, proc)
        log.info("%s is back (pid %d)", name, proc.pid)

    def _run_job(self, job: PeriodicJob) -> None:
        job.next_at = time.time() + job.every_s
        try:
            job.last_summary = job.run()
        except Exception as e:
            job.last_summary = f"failed: {type(e).__name__}: {e}"
            log.warning("periodic job %s failed: %s", job.name, e)
        job.last_run_at = time.time()

    # ------------------------------------------------------------ state file
    def snapshot(self) -> dict[str, Any]:
        """The supervisor's view: per service its state and uptime, recent alerts, jobs."""
        now = time.time()
        services = {}
        for name, st in self.states.items():
            d = asdict(st)
            d["uptime_s"] = (
                round(now - st.started_at, 1) if st.status == "running" and st.started_at else None
            )
            services[name] = d
        extra = self.extra_state() if self.extra_state else {}
        return {
            **extra,
            "pid": os.getpid(),
            "updated_at": now,
            "started_at": self.started_at,
            "services": services,
            "alerts": self.alerts,
            "jobs": [
                {"name": j.name, "last_run_at": j.last_run_at, "last_summary": j.last_summary}
                for j in self.jobs
            ],
        }

    def write_state(self) -> None:
        """Write :meth:`snapshot` to the state file atomically."""
        path = state_path(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1, default=str))
        tmp.replace(path)
