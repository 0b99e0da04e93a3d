"""Process groups: signal a group and its descendants, wait for them to exit, kill a group.

Every service and flow run leads a process group of its own (``start_new_session``); these
helpers stop such a group whole (:func:`deployments.services.stop_records` uses them).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import psutil


def descendants(pid: int) -> list[psutil.Process]:
    """Every live descendant of ``pid`` (none when it is gone)."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def running(p: psutil.Process) -> bool:
    """True while ``p`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def kill_group(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """SIGKILL the process group ``proc`` leads and reap ``proc``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout_s)


def signal_all(procs: list[psutil.Process], group: int, sig: signal.Signals) -> None:
    """Send ``sig`` to the process group ``group`` and to each of ``procs``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)  # the recorded child leads its own group
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process in ``procs`` exited. Returns those still running."""
    deadline = time.monotonic() + timeout_s
    alive = [p for p in procs if running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if running(p)]
    return alive
