"""A restarted ``botai up`` adopts the services an earlier one left running.

When ``botai up`` itself dies (kill -9, OOM, a crash), its services run on: each leads a
process group of its own and writes to its own log. A new ``botai up`` on the same state
folder finds them in the pid file (``<state_dir>/run/services.json``: pid *and* start time,
so a reused pid is never mistaken for a service) and supervises them from where they are,
instead of stopping them: the worker keeps its in-flight flow runs, the server and the store
keep their ports, and a service that dies later is restarted by the new supervisor as
usual. Services the pid file names but that no longer run are started again, in start order.

An adopted process is not a child of the new ``botai up``, so its exit code cannot be read;
:class:`AdoptedProcess` watches it through its pid and start time instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping

import psutil

from core.settings import Settings
from deployments import service_records, services
from deployments.process_groups import wait_gone
from deployments.service_records import CONTROLLER, ServiceRecord, record_alive
from deployments.watchdog import StackWatch

log = logging.getLogger(__name__)

Say = Callable[[str], None]


class AdoptedProcess:
    """A service process an earlier ``botai up`` started, with what the supervisor uses of a
    :class:`subprocess.Popen` (``pid``, ``poll``, ``wait``, ``kill``, ``send_signal``).

    ``poll()`` always returns None (the exit code of a process that is not our child cannot
    be read); :meth:`gone` says whether it still runs.
    """

    def __init__(self, record: ServiceRecord) -> None:
        self.record = record
        self.pid = record.pid
        self.args = record.cmdline
        self.create_time = record.create_time
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"AdoptedProcess({self.record.name!r}, pid={self.pid})"

    def gone(self) -> bool:
        """True once the process (this pid with this start time) no longer runs."""
        return not record_alive(self.record)

    def poll(self) -> int | None:
        """None: the exit code of an adopted process is unknown (see :meth:`gone`)."""
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the process is gone. Returns None (its exit code is unknown).

        Raises:
            subprocess.TimeoutExpired: it still runs after ``timeout`` seconds.
        """
        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return None
        if not self.gone() and wait_gone([proc], 1e9 if timeout is None else timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return None

    def send_signal(self, sig: int) -> None:
        """Signal the process (nothing when it is gone, or the pid belongs to another)."""
        if not self.gone():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process."""
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        """SIGTERM the process."""
        self.send_signal(signal.SIGTERM)


def build_watch(
    settings: Settings, environ: Mapping[str, str], gateway_url: str | None
) -> StackWatch:
    """The stack's supervisor and watchdog, with the services' environments: the gateway's
    signing secret goes to the gateway only, never to the server, worker or runs."""
    env = services.prefect_env(
        settings, {k: v for k, v in environ.items() if k != "BOTAI_API_JWT_SECRET"}
    )
    gateway_env = (
        {**env, "BOTAI_API_JWT_SECRET": environ["BOTAI_API_JWT_SECRET"]} if gateway_url else None
    )
    return StackWatch(settings, env, gateway_env=gateway_env, gateway_url=gateway_url)


def orphaned_services(settings: Settings) -> list[ServiceRecord]:
    """The recorded services that still run although the ``botai up`` that supervised them
    is gone (empty when a ``botai up`` runs, or nothing runs)."""
    running = service_records.running_services(settings)
    if any(r.name == CONTROLLER for r in running):
        return []
    return running


def adopt(
    settings: Settings,
    environ: Mapping[str, str],
    gateway_url: str | None,
    say: Say,
) -> tuple[StackWatch, list[str]]:
    """Take over the services an earlier ``botai up`` left running on this state folder.

    This process becomes the pid file's controller and owner of every running service (so
    ``botai down`` and this process's own stop end them); the supervisor watches them from
    now on; services that should run but do not are started in start order.

    Returns:
        (the watch, the names of the adopted services). A service that had to be started
        and did not is retried by the supervisor's loop with backoff; the adopted ones are
        never stopped for it.
    """
    me = os.getpid()
    alive = {r.name: r for r in orphaned_services(settings)}
    log_path = service_records.run_dir(settings) / "up.log"
    controller = ServiceRecord(
        CONTROLLER,
        me,
        psutil.Process(me).create_time(),
        psutil.Process(me).cmdline(),
        str(log_path),
    )
    controller.owner = me
    adopted = [ServiceRecord(**{**vars(r), "owner": me}) for r in alive.values()]
    service_records.write_records(settings, [controller, *adopted])
    watch = build_watch(settings, environ, gateway_url)
    sup = watch.supervisor
    for name in list(sup.specs):
        if name in alive:
            sup.adopt(name, AdoptedProcess(alive[name]))
            say(f"adopted {name} (pid {alive[name].pid}), left running by the previous botai up")
        else:
            say(f"{name} was not running: starting it")
            try:
                sup.launch(name)
            except Exception as e:  # the adopted services stay up; the loop retries this one
                say(f"{name} did not start ({e}); retried with backoff while supervising")
                sup.launch_later(name, f"start failed: {e}")
    for name in sorted(set(alive) - set(sup.specs)):
        say(f"{name} (pid {alive[name].pid}) runs but is not supervised here: left as it is")
    sup.write_state()
    return watch, [n for n in sup.specs if n in alive]
