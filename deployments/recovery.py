"""Crash recovery: find runs whose process died, re-run them under the same flow-run id,
dead-letter the ones that keep failing, and keep job records true to Prefect's states.

One pass (:func:`recover_once`) over the runs of the platform's work pool:

1. **Detect** (:mod:`deployments.recovery_liveness`): a run ``Pending``/``Running``/
   ``Cancelling`` is judged by its own host's process table when its recorded ``host:pid``
   is this host's, otherwise by Prefect's flow-run heartbeats (``Running``) or by how long
   it stays ``Pending`` (no process table needed). A dead run is proposed ``Crashed``
   (never forced); a dead ``Cancelling`` run is proposed ``Cancelled``. Hung processes
   (SIGSTOP) are found by their stopped state here, or by the heartbeat automation
   (deployments/automations.py).
2. **Resubmit.** A ``Crashed`` run, or a ``Failed`` one whose error is retryable
   (a :class:`core.exceptions.RetryableError` after the tasks' own retries, TC-ASYNC-103,
   or a lost Prefect API),
   goes back to ``Scheduled`` under the same id, like ``prefect flow-run retry`` (proposed
   only when the run, read again, is still in the state it was judged in; the worker starts
   it again, ``run_count`` grows; training resumes from its checkpoint). Waits
   ``recovery_backoff_s`` after the attempt ended, doubling per attempt up to
   ``recovery_backoff_max_s``. Leftover processes of the run (a stopped one) are killed
   first. A run whose result was saved before its process died (its ``training_jobs``
   record says completed, or its ``task_results`` document exists) is set Completed instead:
   the work is not done twice. Never: ``Cancelled`` runs, runs failed on a time limit, ``OperationalError``
   failures (bad input: the message tells the caller what to change; re-running cannot help).
3. **Dead-letter.** A run that used ``recovery_max_attempts`` executions gets a
   ``dead_letters`` document (parameters, every attempt's error and time), an alert, and the
   state ``Failed``/"DeadLettered" saying so.
4. **Reconcile.** Job records (``training_jobs``, ``task_results``) whose status is still
   open are set to the run's real outcome (completed, failed, crashed, cancelled,
   dead-lettered, or queued again) with the reason.

With several replicas only the holder of the recovery lease acts
(:mod:`deployments.recovery_lease`); each pass also frees training slots whose holders are
gone (:mod:`deployments.recovery_slots`).

Attempts are counted from the run's state history (stateless: a restarted service counts
the same; :mod:`deployments.recovery_rules` holds which failures are retried, how attempts are
counted and the backoff). The loop: ``python -m deployments.recovery`` (SIGTERM ends it between
passes).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

from core.settings import Settings, load_settings
from deployments.dead_letters import (
    DEAD_LETTERED,
    dead_letter_doc,
    mark_record_completed,
    reconcile_records,
    work_saved,
)
from deployments.recovery_lease import RecoveryLease
from deployments.recovery_liveness import detect_dead
from deployments.recovery_rules import (
    RECOVERY_MARK,
    backoff_s,
    ended_attempts,
    is_retryable_failure,
    is_time_limit,
)
from deployments.run_processes import (
    forget_process,
    kill_processes,
    local_flow_processes,
    processes_of,
)
from integrations.store import Store

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What one pass did (flow-run ids)."""

    checked: int = 0
    crashed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resubmitted: list[str] = field(default_factory=list)
    dead_lettered: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    reconciled: list[str] = field(default_factory=list)
    slots_freed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    standby: str | None = None

    def busy(self) -> bool:
        """True when the pass changed anything."""
        return any(
            (
                self.crashed,
                self.cancelled,
                self.resubmitted,
                self.dead_lettered,
                self.killed,
                self.completed,
                self.reconciled,
                self.slots_freed,
            )
        )


def _pool_runs(client: Any, settings: Settings, types: list[Any], **flt: Any) -> list[Any]:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        WorkPoolFilter,
        WorkPoolFilterName,
    )

    runs: list[Any] = []
    while True:
        page = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types)),
                deployment_id=FlowRunFilterDeploymentId(is_null_=False),
                **flt,
            ),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[settings.work_pool])),
            limit=200,
            offset=len(runs),
        )
        runs.extend(page)
        if len(page) < 200:
            return runs


def _detect_dead(
    client: Any,
    settings: Settings,
    now: datetime,
    report: RecoveryReport,
    stopped_since: dict[str, datetime] | None,
    may_act: Callable[[], bool],
) -> None:
    from prefect.client.schemas.objects import StateType

    procs = local_flow_processes()  # scanned before the runs are read (see the module doc)
    active = _pool_runs(
        client, settings, [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    )
    report.checked += len(active)
    crashed, cancelled = detect_dead(client, settings, now, active, procs, stopped_since, may_act)
    report.crashed.extend(crashed)
    report.cancelled.extend(cancelled)


def _unmoved(client: Any, run: Any) -> bool:
    """True when ``run`` is still in the state it was read in (a replica or a worker may
    have moved it since): every change below is proposed only then, never forced."""
    now_state = client.read_flow_run(run.id).state
    return now_state is not None and run.state is not None and now_state.id == run.state.id


def _resubmit_or_dead_letter(
    client: Any,
    settings: Settings,
    now: datetime,
    report: RecoveryReport,
    store: Store | None,
    alert: Callable[[str, str], None] | None,
    may_act: Callable[[], bool],
) -> None:
    from prefect.client.schemas.filters import FlowRunFilterEndTime
    from prefect.client.schemas.objects import StateType
    from prefect.states import Completed, Failed, Scheduled

    since = now - timedelta(hours=settings.recovery_window_h)
    ended = _pool_runs(
        client,
        settings,
        [StateType.CRASHED, StateType.FAILED],
        end_time=FlowRunFilterEndTime(after_=since),
    )
    procs: dict[str, list[psutil.Process]] | None = None
    for run in ended:
        state = run.state
        if state is None or state.name == DEAD_LETTERED or is_time_limit(state):
            continue
        if state.type == StateType.FAILED and not is_retryable_failure(state):
            continue
        attempts = ended_attempts(client.read_flow_run_states(run.id))
        if not attempts:
            continue
        if (now - state.timestamp).total_seconds() < backoff_s(settings, len(attempts)):
            continue
        if not may_act() or not _unmoved(client, run):
            continue
        if settings.recovery_local_workers:
            procs = local_flow_processes() if procs is None else procs
            leftover = processes_of(run, procs)
            if leftover:  # e.g. a stopped (SIGSTOP) process the heartbeat check crashed
                kill_processes(leftover)
                report.killed.append(str(run.id))
                continue  # its worker reports the exit first; resubmitted next pass
        if store is not None and work_saved(store, str(run.id)):
            # the work finished and its result is saved; the process died on its way out
            client.set_flow_run_state(
                run.id,
                Completed(
                    message=f"Completed: its result was saved before the process ended "
                    f"({state.name}: {(state.message or '')[:200]}); not re-run "
                    "(recovery service)"
                ),
            )
            mark_record_completed(store, str(run.id), state)
            report.completed.append(str(run.id))
            continue
        if len(attempts) >= settings.recovery_max_attempts:
            if store is None:
                report.problems.append(f"{run.id}: attempts exhausted but no store to dead-letter")
                continue
            doc = dead_letter_doc(client, run, attempts, now)
            new = store.dead_letters.dead_letter_add(doc)  # once, whoever writes it
            client.set_flow_run_state(run.id, Failed(name=DEAD_LETTERED, message=doc["reason"]))
            report.dead_lettered.append(str(run.id))
            log.error("run %s dead-lettered: %s", run.id, doc["reason"])
            if alert is not None and new:
                alert(f"Run dead-lettered: {doc['flow_name']} {run.name}", doc["reason"])
            continue
        k = len(attempts) + 1
        message = (
            f"{RECOVERY_MARK}, attempt {k}/{settings.recovery_max_attempts} "
            f"(previous: {state.name}: {(state.message or '')[:200]})"
        )
        # the last attempt's process is dead: forget its pid, so the next attempt is never
        # judged by it while its own is not recorded yet (a slow start under load)
        forget_process(client, run.id)
        result = client.set_flow_run_state(run.id, Scheduled(message=message))
        if result.status.value != "ACCEPT":
            continue
        report.resubmitted.append(str(run.id))
        log.warning("run %s (%s) resubmitted: %s", run.name, run.id, message)


def recover_once(
    settings: Settings,
    *,
    store: Store | None = None,
    alert: Callable[[str, str], None] | None = None,
    now: datetime | None = None,
    stopped_since: dict[str, datetime] | None = None,
    lease: RecoveryLease | None = None,
    slot_surplus: dict[str, tuple[datetime, int]] | None = None,
) -> RecoveryReport:
    """One pass of detection, resubmission, dead-lettering, record reconciliation and the
    release of leaked training slots (:mod:`deployments.recovery_slots`).

    Uses the Prefect API of the current settings context; ``store`` None skips
    dead-lettering (attempts-exhausted runs wait) and reconciliation. ``alert(title,
    message)`` is called once for each dead-lettered run. ``stopped_since`` (kept by the
    loop between passes) records when a run's process was first seen stopped: one stopped
    for ``recovery_hung_after_s`` is Crashed even if it never sent a heartbeat;
    ``slot_surplus`` (kept the same way) confirms leaked slots across passes. With
    ``lease`` the pass acts only while this replica holds it
    (:mod:`deployments.recovery_lease`); without a store it acts only on a one-machine
    stack (``recovery_local_workers``).

    Returns the :class:`RecoveryReport` (``standby`` names the holder when another
    replica holds the lease).

    Raises:
        httpx.HTTPError, prefect exceptions: the Prefect API failed (the loop retries).
    """
    from prefect.client.orchestration import get_client

    from deployments.recovery_slots import free_leaked_slots

    now = now or datetime.now(UTC)
    report = RecoveryReport()
    may_act: Callable[[], bool] = lambda: True  # noqa: E731
    if lease is not None:
        if store is not None:
            if not lease.acquire(store):
                report.standby = lease.holder
                return report
            may_act = lease.valid
        elif not settings.recovery_local_workers:
            report.problems.append("no store: cannot hold the recovery lease; not acting")
            return report
    with get_client(sync_client=True) as client:
        _detect_dead(client, settings, now, report, stopped_since, may_act)
        _resubmit_or_dead_letter(client, settings, now, report, store, alert, may_act)
        if store is not None and may_act():
            try:
                reconcile_records(client, store, report.reconciled)
            except Exception as e:  # the store may be down: the next pass reconciles
                report.problems.append(f"reconciliation skipped: {type(e).__name__}: {e}")
        if may_act():
            try:
                report.slots_freed.extend(free_leaked_slots(client, settings, now, slot_surplus))
            except Exception as e:  # noqa: BLE001 - the next pass tries again
                report.problems.append(f"slot check skipped: {type(e).__name__}: {e}")
    return report


def _store_and_alert(settings: Settings) -> tuple[Store | None, Callable[[str, str], None] | None]:
    """The platform store and an alert function from the blocks (None when unavailable)."""
    from blocks.loader import load_store
    from tasks.notify import build_notifier

    try:
        store = load_store()
    except Exception as e:
        log.warning("store unavailable for recovery: %s", e)
        return None, None
    notifier = build_notifier(store, settings)

    def alert(title: str, message: str) -> None:
        try:
            notifier.notify("critical", title, message, dedupe_key=f"dead-letter:{title}")
        except Exception as e:  # an alert must never stop recovery
            log.warning("dead-letter alert not sent: %s", e)

    return store, alert


def run_loop(settings: Settings, stop: threading.Event) -> None:
    """Run passes every ``recovery_poll_s`` until ``stop`` is set; errors are logged, never fatal."""
    store, alert = None, None
    stopped_since: dict[str, datetime] = {}
    lease = RecoveryLease(settings.recovery_lease_s)
    slot_surplus: dict[str, tuple[datetime, int]] = {}
    while not stop.is_set():
        try:
            if store is None:
                store, alert = _store_and_alert(settings)
            report = recover_once(
                settings,
                store=store,
                alert=alert,
                stopped_since=stopped_since,
                lease=lease,
                slot_surplus=slot_surplus,
            )
            if report.busy() or report.problems:
                log.info("recovery pass: %s", report)
            if any("reconciliation skipped" in p for p in report.problems):
                store = None  # reconnect next time
        except Exception as e:
            log.warning("recovery pass failed (%s: %s); retrying", type(e).__name__, e)
        stop.wait(settings.recovery_poll_s)
    if store is not None:
        with contextlib.suppress(Exception):  # a successor then takes over at once
            lease.release(store)


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.recovery [--once]``: the recovery service (SIGTERM ends it)."""
    parser = argparse.ArgumentParser(
        prog="python -m deployments.recovery", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--once", action="store_true", help="one pass, print its report, exit")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = load_settings()
    if args.once:
        store, alert = _store_and_alert(settings)
        lease = RecoveryLease(settings.recovery_lease_s)
        log.info("%s", recover_once(settings, store=store, alert=alert, lease=lease))
        return 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "recovery service: pool %s, pass every %.1f s", settings.work_pool, settings.recovery_poll_s
    )
    run_loop(settings, stop)
    log.info("recovery service stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
