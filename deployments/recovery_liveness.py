"""Host-aware liveness: which active runs (``Pending``/``Running``/``Cancelling``) are dead.

Each rule needs only what its host can see (:func:`judge`):

1. **Own processes** (a run whose recorded ``host:pid`` is this host's, or a process here
   carrying its id): the process table decides. Gone or a zombie for
   ``recovery_exit_grace_s`` (``Running``/``Cancelling``) or ``recovery_start_grace_s``
   (``Pending``): dead. Stopped (SIGSTOP) for ``recovery_hung_after_s``: hung, dead.
2. **Another host's runs, or runs with no recorded process** (a worker that died between
   claiming a run and starting it, a warm run whose pid is not recorded yet, any run when
   ``recovery_local_workers`` is off):

   * ``Running``/``Cancelling``: Prefect's flow-run heartbeats decide. No heartbeat for
     ``recovery_heartbeat_stale_s`` (at least two heartbeat periods; the state's own time
     counts as the first heartbeat): dead. With the 30 s heartbeat and the default 75 s a
     dead host's run is found within 90 s (plus one pass).
   * ``Pending``: its flow has not started, so it sends no heartbeat; it is dead when it
     stays ``Pending`` for ``recovery_pending_max_s`` (default 120 s, well above a start
     under load; the start grace of rule 1 is for processes this host can see). No process
     table is needed, so a Pending run that never starts is found on any host, and a warm
     run that has not recorded its pid yet is not crashed after the short start grace.

A dead run is proposed ``Crashed`` (never forced: a run that reached another state
meanwhile keeps it; Prefect refuses Crashed after a final state); a dead ``Cancelling`` run
is proposed ``Cancelled``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psutil

from core.settings import Settings
from deployments.run_processes import (
    hung_for_s,
    is_local_host,
    parse_infrastructure_pid,
    process_alive,
    processes_of,
)

log = logging.getLogger(__name__)

HEARTBEAT_EVENT = "prefect.flow-run.heartbeat"


@dataclass
class Verdict:
    """Why a run is judged dead (``hung`` True: its process is stopped, not gone)."""

    reason: str
    hung: bool = False


def heartbeat_stale_s(settings: Settings) -> float:
    """Heartbeat silence that means a dead run: the setting, at least two heartbeat periods."""
    return max(settings.recovery_heartbeat_stale_s, 2.0 * settings.heartbeat_s)


def last_heartbeats(client: Any, run_ids: list[str], since: datetime) -> dict[str, datetime]:
    """Newest ``prefect.flow-run.heartbeat`` of each run in ``run_ids`` since ``since``.

    Returns flow-run id -> time of its newest heartbeat (runs without one are left out).
    """
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventResourceFilter,
    )

    if not run_ids:
        return {}
    out: dict[str, datetime] = {}
    flt = EventFilter(
        occurred=EventOccurredFilter(since=since),
        event=EventNameFilter(name=[HEARTBEAT_EVENT]),
        resource=EventResourceFilter(id=[f"prefect.flow-run.{r}" for r in run_ids]),
    )
    page = client.read_events(filter=flt, limit=50)
    for _ in range(100):  # at most 5,000 heartbeats a pass
        for event in page.events:
            run_id = event.resource.id.removeprefix("prefect.flow-run.")
            if run_id not in out or event.occurred > out[run_id]:
                out[run_id] = event.occurred
        if not page.next_page:
            break
        page = client.read_events_page(page.next_page)
    return out


def judge(
    run: Any,
    procs: dict[str, list[psutil.Process]],
    settings: Settings,
    now: datetime,
    heartbeat: datetime | None,
    stopped_since: dict[str, datetime] | None,
) -> Verdict | None:
    """Whether the active ``run`` is dead, by the rules of the module doc.

    ``heartbeat`` is the run's newest flow-run heartbeat (None: none seen). Returns a
    :class:`Verdict` when dead, None while it is alive or cannot be judged yet.
    """
    state = run.state
    kind = state.type.value
    age_s = (now - state.timestamp).total_seconds()
    alive = process_alive(run, procs, settings)
    host, pid = parse_infrastructure_pid(run.infrastructure_pid)
    own = alive is True or (alive is False and pid is not None and is_local_host(host))
    if own:
        if alive and stopped_since is not None:
            hung_s = hung_for_s(processes_of(run, procs), str(run.id), stopped_since, now)
            if hung_s >= settings.recovery_hung_after_s:
                return Verdict(f"its process is stopped (hung) for {hung_s:.0f} s", hung=True)
        if alive:
            return None
        grace = (
            settings.recovery_start_grace_s if kind == "PENDING" else settings.recovery_exit_grace_s
        )
        if age_s < grace:
            return None
        return Verdict(f"{state.name} for {age_s:.0f} s with no live process (pid {pid})")
    if kind == "PENDING":
        if heartbeat is not None or age_s < settings.recovery_pending_max_s:
            return None
        where = f"claimed by {host}" if host else "no process recorded"
        return Verdict(f"Pending for {age_s:.0f} s, its flow never started ({where})")
    last = max(heartbeat, state.timestamp) if heartbeat is not None else state.timestamp
    silent_s = (now - last).total_seconds()
    if silent_s < heartbeat_stale_s(settings):
        return None
    where = f"on host {host}" if host else "no process recorded"
    return Verdict(f"{state.name} with no heartbeat for {silent_s:.0f} s ({where})")


def detect_dead(
    client: Any,
    settings: Settings,
    now: datetime,
    active: list[Any],
    procs: dict[str, list[psutil.Process]],
    stopped_since: dict[str, datetime] | None,
    may_act: Callable[[], bool],
) -> tuple[list[str], list[str]]:
    """Propose ``Crashed`` (``Cancelled`` for a Cancelling run) for each dead run of ``active``.

    ``procs`` is the local process scan, taken before ``active`` was read (a run that
    started in between is then seen with its process). ``may_act()`` is asked before each
    change (the recovery lease is still held).

    Returns (crashed run ids, cancelled run ids): the proposals the server accepted.
    """
    from prefect.states import Cancelled, Crashed

    crashed: list[str] = []
    cancelled: list[str] = []
    beats = last_heartbeats(
        client,
        [str(r.id) for r in active if r.state is not None],
        now - timedelta(seconds=max(heartbeat_stale_s(settings), settings.recovery_pending_max_s)),
    )
    for run in active:
        if run.state is None:
            continue
        verdict = judge(run, procs, settings, now, beats.get(str(run.id)), stopped_since)
        if verdict is None or not may_act():
            continue
        if run.state.type.value == "CANCELLING" and not verdict.hung:
            new = Cancelled(message=f"Cancelled: {verdict.reason}; nothing left to stop")
            result = client.set_flow_run_state(run.id, new)
            if result.status.value == "ACCEPT":
                cancelled.append(str(run.id))
        else:
            new = Crashed(message=f"Crashed: {verdict.reason}; detected by the recovery service")
            result = client.set_flow_run_state(run.id, new)
            if result.status.value == "ACCEPT":
                crashed.append(str(run.id))
        log.warning("run %s (%s): %s -> %s", run.name, run.id, verdict.reason, result.status.value)
    return crashed, cancelled
