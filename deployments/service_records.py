"""The pid file of a stack: which processes ``botai up`` started, so that any later command
(``botai down``, ``botai status``, the watchdog) finds them.

``<state_dir>/run/services.json`` holds one record per process (pid, start time, command line,
log, the pid of the process that recorded it); a record is alive while a process of that pid
*and* start time runs. The service logs live beside it in ``<state_dir>/run``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from core.settings import Settings

log = logging.getLogger(__name__)

#: Pid-file name of the ``botai up`` process itself (signalled alone, never its group).
CONTROLLER = "botai-up"


@dataclass
class ServiceRecord:
    """One started process, as written to the pid file."""

    name: str
    pid: int
    create_time: float
    cmdline: list[str]
    log_path: str
    owner: int = 0  # pid of the process that started and recorded it


def run_dir(settings: Settings) -> Path:
    """``<state_dir>/run``: pid file and service logs."""
    return settings.state_dir / "run"


def pid_file(settings: Settings) -> Path:
    """``<state_dir>/run/services.json``: the processes the run command started."""
    return run_dir(settings) / "services.json"


def read_records(settings: Settings) -> list[ServiceRecord]:
    """The recorded services (empty when none were recorded or the file is unreadable)."""
    path = pid_file(settings)
    if not path.exists():
        return []
    try:
        return [ServiceRecord(**r) for r in json.loads(path.read_text())]
    except (ValueError, TypeError):
        log.warning("ignoring unreadable pid file %s", path)
        return []


def write_records(settings: Settings, records: list[ServiceRecord]) -> None:
    """Replace the pid file's records with ``records`` (written whole, then renamed)."""
    path = pid_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps([asdict(r) for r in records], indent=1))
    tmp.replace(path)


def record_service(settings: Settings, name: str, pid: int, log_path: Path) -> ServiceRecord:
    """Record the process ``pid`` as service ``name`` of this process in the pid file,
    replacing this process's earlier record of that name (a restarted service). Returns it."""
    proc = psutil.Process(pid)
    me = os.getpid()
    rec = ServiceRecord(name, pid, proc.create_time(), proc.cmdline(), str(log_path), owner=me)
    records = read_records(settings)
    same = [i for i, r in enumerate(records) if r.name == name and r.owner == me]
    if same:  # keep its place: services stop in reverse start order
        records[same[0]] = rec
        records = [r for i, r in enumerate(records) if i not in same[1:]]
    else:
        records.append(rec)
    write_records(settings, records)
    return rec


def record_alive(rec: ServiceRecord) -> bool:
    """True when the recorded process still runs (same pid *and* start time)."""
    try:
        proc = psutil.Process(rec.pid)
        return (
            abs(proc.create_time() - rec.create_time) < 1.0
            and proc.status() != psutil.STATUS_ZOMBIE
        )
    except psutil.Error:
        return False


def running_services(settings: Settings) -> list[ServiceRecord]:
    """The recorded services that still run."""
    return [r for r in read_records(settings) if record_alive(r)]
