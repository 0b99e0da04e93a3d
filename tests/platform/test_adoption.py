"""Adoption with real processes and no stack: a service left running by a `botai up` that
died is found by pid and start time, supervised by the next one, and restarted when it dies;
a reused pid (another start time) is never adopted. The whole-stack case (kill -9 of a real
`botai up`) is in test_supervisor.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from core.settings import load_settings
from deployments import service_records
from deployments.adoption import AdoptedProcess, orphaned_services
from deployments.service_records import CONTROLLER, ServiceRecord, record_service
from deployments.supervisor import ServiceSpec, Supervisor

pytestmark = pytest.mark.tc("TC-ASYNC-077")


def _sleeper(tmp: Path) -> subprocess.Popen:
    """A process in a session of its own, like every service botai up starts."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(600)"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _dead_controller(settings) -> None:
    """The pid file's controller record: a `botai up` that has exited (a real process)."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    records = [r for r in service_records.read_records(settings) if r.name != CONTROLLER]
    dead = ServiceRecord(CONTROLLER, gone.pid, time.time() - 5, ["botai", "up"], "up.log")
    service_records.write_records(settings, [dead, *records])


def test_a_left_service_is_adopted_watched_and_restarted_when_it_dies(tmp_path: Path):
    settings = load_settings(
        state_dir=tmp_path / "state", supervisor_poll_s=0.1, restart_backoff_initial_s=0.1
    )
    left = _sleeper(tmp_path)
    started: list[subprocess.Popen] = []
    try:
        record_service(settings, CONTROLLER, os.getpid(), tmp_path / "up.log")
        record_service(settings, "sleeper", left.pid, tmp_path / "sleeper.log")
        assert orphaned_services(settings) == []  # its botai up runs: nothing to adopt
        _dead_controller(settings)
        (orphan,) = orphaned_services(settings)
        assert orphan.name == "sleeper" and orphan.pid == left.pid

        def start() -> subprocess.Popen:
            proc = _sleeper(tmp_path)
            record_service(settings, "sleeper", proc.pid, tmp_path / "sleeper.log")
            started.append(proc)
            return proc

        sup = Supervisor(settings, [ServiceSpec("sleeper", start)], lambda *a: None)
        adopted = AdoptedProcess(orphan)
        sup.adopt("sleeper", adopted)
        sup.tick()
        assert not started and sup.states["sleeper"].pid == left.pid  # watched, not replaced
        assert sup.states["sleeper"].started_at == pytest.approx(orphan.create_time)

        os.kill(left.pid, signal.SIGKILL)
        left.wait()  # the test is its parent here; in production init reaps it
        assert adopted.gone() and adopted.poll() is None and adopted.wait(1) is None
        deadline = time.monotonic() + 20
        while not started and time.monotonic() < deadline:
            sup.tick()
            time.sleep(0.1)
        assert started, "the adopted service was not restarted after it died"
        st = sup.states["sleeper"]
        assert st.restarts == 1 and st.pid == started[0].pid
        assert st.last_error == "exited on its own (adopted: exit code unknown)"
        assert st.last_exit_code is None

        # a service that was not running and failed to start is retried by the loop
        sup.add(ServiceSpec("second", start))
        sup.launch_later("second", "start failed: port in use")
        assert sup.states["second"].status == "restarting"
        deadline = time.monotonic() + 20
        while len(started) < 2 and time.monotonic() < deadline:
            sup.tick()
            time.sleep(0.1)
        assert sup.states["second"].status == "running" and sup.states["second"].restarts == 1
    finally:
        for proc in [left, *started]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_reused_pid_is_not_adopted(tmp_path: Path):
    """A record whose pid now belongs to a process started at another time is not alive."""
    settings = load_settings(state_dir=tmp_path / "state")
    other = _sleeper(tmp_path)
    try:
        proc = psutil.Process(other.pid)
        stale = ServiceRecord(
            "prefect-worker", other.pid, proc.create_time() - 3600, proc.cmdline(), "w.log"
        )
        service_records.write_records(settings, [stale])
        _dead_controller(settings)
        assert orphaned_services(settings) == []
        adopted = AdoptedProcess(stale)
        assert adopted.gone()
        adopted.kill()  # never signals the stranger
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
