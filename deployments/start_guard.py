"""The start guard: a flow-run process re-reads its run before the flow body starts and exits
without running it when a cancel reached the run first.

Why it is needed (Prefect 3.9's orchestration rules, ``prefect/server/orchestration/
core_policy.py``): a run can leave ``Cancelled`` for ``Running`` (terminal states may be
left for a re-run), so a cancel that lands while a worker is starting the run's process
(the run ``Pending``) must be seen by that process itself. The gateway proposes
``Cancelling`` (never forces ``Cancelled`` onto a run that may have moved): the server turns
it into ``Cancelled`` at once for a run no worker holds (no ``infrastructure_pid``), and
refuses ``Pending`` after ``Cancelled``/``Cancelling`` and ``Running`` after
``Cancelling``. What remains is a ``Cancelled`` set on a run whose process was already
starting; this guard closes it by reading the run's state history, which only grows:

* a ``Cancelling`` or ``Cancelled`` state after the run's last ``Scheduled`` one means a
  cancel was asked for this attempt: the process finishes the cancel (proposes
  ``Cancelled``; the run's own process is the one that would have run it, so no other
  process can start it meanwhile) and exits without running the flow;
* otherwise the process records its ``host:pid`` at once (recovery then sees a live
  process even before the worker records it) and the engine starts as usual.

A Prefect API that does not answer lets the run start: the engine needs the API too and
reports its own failure.
"""

from __future__ import annotations

import logging
import os
from typing import Any
from uuid import UUID

from core.settings import load_settings

log = logging.getLogger(__name__)

#: Message of the Cancelled state the guard sets.
GUARD_MESSAGE = "Cancelled before its flow started (the run's process saw the cancel)"


def cancel_requested(states: list[Any]) -> Any | None:
    """The ``Cancelling``/``Cancelled`` state asked for the current attempt, or None.

    ``states`` is the run's state history (``read_flow_run_states``); only states after
    the last ``Scheduled`` one count (a run re-queued by recovery is a new attempt).
    """
    found = None
    for state in sorted(states, key=lambda s: s.timestamp):
        kind = state.type.value
        if kind == "SCHEDULED":
            found = None
        elif kind in ("CANCELLING", "CANCELLED"):
            found = found or state
    return found


def requeued_since(states: list[Any], claimed: Any) -> bool:
    """True when the run was queued again after the attempt that started from the
    ``claimed`` Scheduled state: a newer Scheduled state is in the history ``states``. A
    report about that attempt (its crash) must then not land on the next attempt."""
    if claimed is None:
        return False
    return any(
        s.type.value == "SCHEDULED" and s.id != claimed.id and s.timestamp > claimed.timestamp
        for s in states
    )


def host_pid(pid: int | None = None) -> str:
    """``host:pid`` of this process (the form the warm worker records, with the host name of
    the settings: ``BOTAI_HOST_NAME``, unset the machine's hostname)."""
    return f"{load_settings().host_name}:{pid or os.getpid()}"


def may_start(flow_run_id: str) -> bool:
    """Whether run ``flow_run_id`` may start its flow in this process.

    Returns:
        False when a cancel was asked for this attempt (the run is then set Cancelled if
        it was Cancelling); True otherwise, also when the API cannot be read.
    """
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelled

    run_id = UUID(flow_run_id)
    try:
        with get_client(sync_client=True) as client:
            cancel = cancel_requested(client.read_flow_run_states(run_id))
            if cancel is None:
                client.update_flow_run(run_id, infrastructure_pid=host_pid())
                return True
            run = client.read_flow_run(run_id)
            if run.state is not None and run.state.type.value == "CANCELLING":
                message = f"{GUARD_MESSAGE}: {cancel.message or cancel.name}"
                client.set_flow_run_state(run_id, Cancelled(message=message[:500]))
            log.info("run %s: cancelled before its flow started; not running it", run_id)
            return False
    except Exception:  # noqa: BLE001 - the engine reports an unreachable API itself
        log.warning("start guard of run %s could not read the run", run_id, exc_info=True)
        return True


def main() -> None:
    """``python -m deployments.start_guard``: the engine command of a run started the stock
    way (a fresh interpreter): the guard, then ``python -m prefect.engine`` in-process.
    The run's id comes from ``PREFECT__FLOW_RUN_ID`` as for the engine."""
    import runpy

    run_id = os.environ.get("PREFECT__FLOW_RUN_ID", "")
    if run_id and not may_start(run_id):
        return
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
