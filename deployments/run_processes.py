"""The processes of flow runs on this machine: which run a process belongs to, whether a run
still has a live (or a stopped) process, and ending a dead run's leftovers.

Every flow-run process the process worker starts (its supervisor and the ``prefect.engine``
child) carries ``PREFECT__FLOW_RUN_ID`` in its environment; the worker also records the
supervisor's pid on the run (``infrastructure_pid``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import psutil

from core.settings import Settings, load_settings

_ENV_KEY = "PREFECT__FLOW_RUN_ID"


def parse_infrastructure_pid(value: str | None) -> tuple[str | None, int | None]:
    """``"host:pid"`` or ``"pid"`` -> (host or None, pid); (None, None) when unset/unreadable."""
    if not value:
        return None, None
    host, _, pid = value.rpartition(":")
    try:
        return host or None, int(pid)
    except ValueError:
        return None, None


def is_local_host(host: str | None) -> bool:
    """True when ``host`` (from a ``host:pid`` record; None for a bare pid) is this host: its
    name in the settings (``BOTAI_HOST_NAME``, the name its warm worker records; unset: the
    machine's hostname)."""
    if host is None or host in ("localhost", "127.0.0.1"):
        return True
    return host in (load_settings().host_name, socket.gethostname())


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def local_flow_processes() -> dict[str, list[psutil.Process]]:
    """Live processes of this user that run a flow run: flow-run id -> processes.

    A process counts when its environment carries ``PREFECT__FLOW_RUN_ID`` and its command
    line is Prefect's (the worker's supervisor or ``prefect.engine``), so a helper process a
    flow left behind does not keep a dead run "alive". Zombies are left out.
    """
    uid = os.getuid()
    out: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["uids", "cmdline"]):
        try:
            if proc.info["uids"] is None or proc.info["uids"].real != uid:
                continue
            if not any("prefect" in part for part in proc.info["cmdline"] or ()):
                continue
            run_id = proc.environ().get(_ENV_KEY)
            if run_id and proc.status() != psutil.STATUS_ZOMBIE:
                out.setdefault(run_id, []).append(proc)
        except psutil.Error:
            continue
    return out


def processes_of(run: Any, procs: dict[str, list[psutil.Process]]) -> list[psutil.Process]:
    """The live local processes of ``run``: those carrying its id in their environment
    (:func:`local_flow_processes`) plus the process its ``infrastructure_pid`` names when that
    is on this host. The warm worker's runs are forked from a pre-imported parent, so their
    environment block (``/proc/<pid>/environ``) does not show the run id: only the recorded
    pid finds them."""
    found = list(procs.get(str(run.id), []))
    host, pid = parse_infrastructure_pid(getattr(run, "infrastructure_pid", None))
    if pid is not None and is_local_host(host) and pid not in {p.pid for p in found}:
        try:
            proc = psutil.Process(pid)
            if _alive(proc):
                found.append(proc)
        except psutil.Error:
            pass
    return found


def kill_processes(procs: Iterable[psutil.Process]) -> int:
    """SIGKILL ``procs`` and their descendants (stopped ones too). Returns how many got it."""
    targets: dict[int, psutil.Process] = {}
    for proc in procs:
        try:
            for p in [proc, *proc.children(recursive=True)]:
                targets[p.pid] = p
        except psutil.Error:
            continue
    for p in targets.values():
        try:
            p.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(list(targets.values()), timeout=5)
    return len(targets)


def process_alive(
    run: Any, procs: dict[str, list[psutil.Process]], settings: Settings
) -> bool | None:
    """Whether ``run`` has a live process here; None when that cannot be told from here.

    Alive: a process carries the run's id in its environment, or the recorded pid runs (not
    a zombie). The pid alone is enough: under heavy load a just-started process was seen
    without the run id for tens of seconds (still in its parent's image), and calling a
    live run dead is worse than waiting for the heartbeat check.
    """
    host, pid = parse_infrastructure_pid(run.infrastructure_pid)
    if not is_local_host(host):
        return None
    if not settings.recovery_local_workers:
        return None
    if str(run.id) in procs:
        return True
    if pid is not None:
        try:
            proc = psutil.Process(pid)
            return _alive(proc)
        except psutil.Error:
            return False
    return False


def hung_for_s(
    procs: list[psutil.Process], run_id: str, stopped_since: dict[str, datetime], now: datetime
) -> float:
    """Seconds a process of the run has been seen stopped (SIGSTOP, ``T``); 0 when none is."""
    stopped = False
    for p in procs:
        try:
            stopped = stopped or p.status() == psutil.STATUS_STOPPED
        except psutil.Error:
            continue
    if not stopped:
        stopped_since.pop(run_id, None)
        return 0.0
    return (now - stopped_since.setdefault(run_id, now)).total_seconds()


def forget_process(client: Any, run_id: Any) -> None:
    """Clear the process recorded on a run (``infrastructure_pid``) whose process is gone,
    before it is queued again: its next attempt is then never judged by the old pid while
    its own is not recorded yet. (``update_flow_run`` drops an empty value, so the
    PATCH is sent as it does.)"""
    client.request(
        "PATCH", "/flow_runs/{id}", path_params={"id": run_id}, json={"infrastructure_pid": ""}
    )
