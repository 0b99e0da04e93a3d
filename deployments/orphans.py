"""Flow-run processes of this stack whose worker is gone: find them, end them, mark the runs.

A process worker starts each flow run as a child in a session of its own; when the worker
dies (kill -9, or killed by the watchdog as hung) those children are reparented and nothing
signals them any more. They are found by the last known descendants of the worker and by
their environment (``PREFECT__FLOW_RUN_ID`` set and ``BOTAI_STATE_DIR`` equal to this stack's
state folder), which survives reparenting. They get SIGTERM (a training saves its
checkpoint), SIGKILL after the grace time, and their runs, when still Running or Pending,
are set Crashed with a message, so the recovery service resubmits them (TC-ASYNC-077).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterable

import psutil

from core.settings import Settings

log = logging.getLogger(__name__)

CRASH_MESSAGE = (
    "Its worker died; the flow-run process was ended by the supervisor of botai up "
    "(TC-ASYNC-077) and is left for crash recovery."
)


def _running(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def flow_run_processes(
    settings: Settings, known: Iterable[psutil.Process] = ()
) -> dict[int, tuple[psutil.Process, str | None]]:
    """Processes of this stack's flow runs: ``known`` ones still running plus every process
    whose environment names a flow run and this state folder.

    Returns pid -> (process, flow-run id or None when its environment is unreadable).
    """
    state_dir = str(settings.state_dir)
    found: dict[int, tuple[psutil.Process, str | None]] = {}
    for p in known:
        if _running(p):
            found[p.pid] = (p, None)
    for p in psutil.process_iter():
        try:
            env = p.environ()
        except (psutil.Error, OSError):
            continue
        run_id = env.get("PREFECT__FLOW_RUN_ID")
        if run_id and env.get("BOTAI_STATE_DIR") == state_dir and _running(p):
            found[p.pid] = (p, run_id)
    for pid, (p, run_id) in list(found.items()):
        if run_id is None:
            with contextlib.suppress(psutil.Error, OSError):
                found[pid] = (p, p.environ().get("PREFECT__FLOW_RUN_ID"))
    return found


def end_processes(procs: list[psutil.Process], grace_s: float) -> int:
    """SIGTERM ``procs`` and their descendants, SIGKILL what still runs after ``grace_s``.

    Returns how many needed SIGKILL.
    """
    everything: dict[int, psutil.Process] = {}
    for p in procs:
        everything[p.pid] = p
        with contextlib.suppress(psutil.Error):
            for c in p.children(recursive=True):
                everything[c.pid] = c
    for p in everything.values():
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
            p.send_signal(signal.SIGCONT)  # a stopped process must run to see SIGTERM
    deadline = time.monotonic() + grace_s
    alive = [p for p in everything.values() if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in alive if _running(p)]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    return len(alive)


def mark_crashed(settings: Settings, run_ids: Iterable[str]) -> list[str]:
    """Set each run that is still Running or Pending to Crashed (others are left alone).

    Returns the ids marked. Never raises (the Prefect API may be down: crash recovery then
    finds the runs without a live process itself).
    """
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from tasks.queue_health import quick_client

    marked: list[str] = []
    try:
        with quick_client(settings, timeout_s=10.0) as client:
            for run_id in run_ids:
                try:
                    run = client.read_flow_run(run_id)
                    if run.state and run.state.type in (StateType.RUNNING, StateType.PENDING):
                        client.set_flow_run_state(run_id, Crashed(message=CRASH_MESSAGE))
                        marked.append(run_id)
                except Exception as e:
                    log.warning("flow run %s not marked Crashed: %s", run_id, e)
    except Exception as e:
        log.warning("Prefect API unavailable, orphaned runs left to crash recovery: %s", e)
    return marked


def end_orphaned_flow_runs(
    settings: Settings,
    known: Iterable[psutil.Process] = (),
    grace_s: float = 30.0,
    *,
    found: dict[int, tuple[psutil.Process, str | None]] | None = None,
) -> dict[str, object]:
    """End this stack's flow-run processes (``found``, else :func:`flow_run_processes` now)
    and mark their runs Crashed.

    Find them while no worker of this stack runs (their parent is gone), so that no run of
    a new worker is taken for an orphan.

    Returns ``{"ended": [pids], "killed": n, "crashed": [run ids], "runs": [run ids]}``.
    """
    if found is None:
        found = flow_run_processes(settings, known)
    if not found:
        return {"ended": [], "killed": 0, "crashed": [], "runs": []}
    runs = sorted({r for _, r in found.values() if r})
    log.warning(
        "ending %d orphaned flow-run process(es) of runs %s", len(found), ", ".join(runs) or "?"
    )
    killed = end_processes([p for p, _ in found.values()], grace_s)
    crashed = mark_crashed(settings, runs) if runs else []
    return {"ended": sorted(found), "killed": killed, "crashed": crashed, "runs": runs}
