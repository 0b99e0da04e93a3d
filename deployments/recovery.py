"""Crash recovery: find runs whose process died, re-run them under the same flow-run id,
dead-letter the ones that keep failing, and keep job records true to Prefect's states.

One pass (:func:`recover_once`) over the runs of the platform's work pool:

1. **Detect.** A run ``Pending``/``Running``/``Cancelling`` with no live process on this
   machine is dead: no process carries its ``PREFECT__FLOW_RUN_ID`` (every flow-run process
   the process worker starts does), or the pid the worker recorded
   (``infrastructure_pid``, "pid" or "host:pid") is gone or a zombie. A ``Running`` run is
   judged after ``recovery_exit_grace_s`` (the worker, when alive, reports the exit first),
   a ``Pending``/``Submitting`` one after ``recovery_start_grace_s`` (a worker or server that
   died between claiming the run and starting its process). It is proposed ``Crashed``
   (never forced: a run that reached a final state meanwhile keeps it); a dead
   ``Cancelling`` run becomes ``Cancelled``. Hung processes (SIGSTOP, deadlock) are marked
   ``Crashed`` by the heartbeat automation (deployments/automations.py).
2. **Resubmit.** A ``Crashed`` run, or a ``Failed`` one whose error is retryable
   (a :class:`core.exceptions.RetryableError` after the tasks' own retries, TC-ASYNC-103),
   goes back to ``Scheduled`` under the same id, like ``prefect flow-run retry`` (forced; the
   worker starts it again, ``run_count`` grows; training resumes from its checkpoint). Waits
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

Attempts are counted from the run's state history (stateless: a restarted service counts
the same). The loop: ``python -m deployments.recovery`` (SIGTERM ends it between passes).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil

from core import exceptions as errors
from core.settings import Settings
from deployments.dead_letters import (
    DEAD_LETTERED,
    REQUEUE_MARK,
    dead_letter_doc,
    mark_record_completed,
    reconcile_records,
    save_dead_letter,
    work_saved,
)
from deployments.run_processes import (
    hung_for_s,
    kill_processes,
    local_flow_processes,
    process_alive,
    processes_of,
)
from integrations.store import Store

log = logging.getLogger(__name__)

#: Message prefix of the Scheduled state a resubmission sets (attempts are counted by it).
RECOVERY_MARK = "recovered after crash"


def retryable_error_names() -> set[str]:
    """Class names of :class:`core.exceptions.RetryableError` and all its subclasses."""
    names, todo = set(), [errors.RetryableError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def is_time_limit(state: Any) -> bool:
    """True for a run ended by a time limit (contract: such runs are never resubmitted)."""
    message = (state.message or "").lower()
    return state.name == "TimedOut" or "time limit" in message or "exceeded timeout" in message


def is_retryable_failure(state: Any) -> bool:
    """True when a Failed state's message names a retryable error (and no time limit)."""
    if state.name == DEAD_LETTERED or is_time_limit(state):
        return False
    message = state.message or ""
    return any(re.search(rf"\b{name}\b", message) for name in retryable_error_names())


@dataclass
class Attempt:
    """One execution of a run that ended badly (a Crashed or Failed state)."""

    run_count: int
    state: str
    message: str
    at: datetime

    def as_doc(self) -> dict[str, Any]:
        return {
            "run_count": self.run_count,
            "state": self.state,
            "message": self.message,
            "at": self.at,
        }


def ended_attempts(states: list[Any]) -> list[Attempt]:
    """The attempts since the last re-queue from dead letters, oldest first.

    ``states`` is the run's state history (``read_flow_run_states``): every Crashed or
    Failed state ends one attempt.
    """
    attempts: list[Attempt] = []
    runs = 0
    for s in sorted(states, key=lambda s: s.timestamp):
        if s.type.value == "SCHEDULED" and (s.message or "").startswith(REQUEUE_MARK):
            attempts = []
        elif s.type.value == "RUNNING":
            runs += 1
        elif s.type.value in ("CRASHED", "FAILED") and s.name != DEAD_LETTERED:
            attempts.append(Attempt(runs, s.name, s.message or "", s.timestamp))
    return attempts


def backoff_s(settings: Settings, attempts_done: int) -> float:
    """Wait after the ``attempts_done``-th failed attempt before the next one, seconds."""
    return min(
        settings.recovery_backoff_s * 2 ** max(0, attempts_done - 1),
        settings.recovery_backoff_max_s,
    )


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
    problems: list[str] = field(default_factory=list)

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
    stopped_since: dict[str, datetime] | None = None,
) -> None:
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled, Crashed

    procs = local_flow_processes()  # scanned before the runs are read (see the module doc)
    active = _pool_runs(
        client, settings, [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    )
    report.checked += len(active)
    for run in active:
        state = run.state
        if state is None:
            continue
        alive = process_alive(run, procs, settings)
        if alive and stopped_since is not None:
            hung_s = hung_for_s(processes_of(run, procs), str(run.id), stopped_since, now)
            if hung_s >= settings.recovery_hung_after_s:
                new = Crashed(
                    message=f"Crashed: its process is stopped (hung) for {hung_s:.0f} s; "
                    "detected by the recovery service"
                )
                result = client.set_flow_run_state(run.id, new)
                if getattr(result.state, "type", None) == StateType.CRASHED:
                    report.crashed.append(str(run.id))
            continue
        if alive is not False:
            continue
        age_s = (now - state.timestamp).total_seconds()
        grace = (
            settings.recovery_start_grace_s
            if state.type == StateType.PENDING
            else settings.recovery_exit_grace_s
        )
        if age_s < grace:
            continue
        what = f"pid {run.infrastructure_pid}" if run.infrastructure_pid else "no process"
        if state.type == StateType.CANCELLING:
            new = Cancelled(message=f"Cancelled: its process is gone ({what}); nothing to stop")
            result = client.set_flow_run_state(run.id, new, force=True)
            report.cancelled.append(str(run.id))
        else:
            new = Crashed(
                message=f"Crashed: {state.name} for {age_s:.0f} s with no live process "
                f"({what}); detected by the recovery service"
            )
            result = client.set_flow_run_state(run.id, new)
            if getattr(result.state, "type", None) == StateType.CRASHED:
                report.crashed.append(str(run.id))
        log.warning("run %s (%s): %s -> %s", run.name, run.id, state.name, result.status.value)


def _resubmit_or_dead_letter(
    client: Any,
    settings: Settings,
    now: datetime,
    report: RecoveryReport,
    store: Store | None,
    alert: Callable[[str, str], None] | None,
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
                    f"({state.name}); not re-run (recovery service)"
                ),
                force=True,
            )
            mark_record_completed(store, str(run.id), state)
            report.completed.append(str(run.id))
            continue
        if len(attempts) >= settings.recovery_max_attempts:
            if store is None:
                report.problems.append(f"{run.id}: attempts exhausted but no store to dead-letter")
                continue
            doc = dead_letter_doc(client, run, attempts, now)
            save_dead_letter(store, doc)
            client.set_flow_run_state(
                run.id, Failed(name=DEAD_LETTERED, message=doc["reason"]), force=True
            )
            report.dead_lettered.append(str(run.id))
            log.error("run %s dead-lettered: %s", run.id, doc["reason"])
            if alert is not None:
                alert(f"Run dead-lettered: {doc['flow_name']} {run.name}", doc["reason"])
            continue
        k = len(attempts) + 1
        message = (
            f"{RECOVERY_MARK}, attempt {k}/{settings.recovery_max_attempts} "
            f"(previous: {state.name}: {(state.message or '')[:200]})"
        )
        client.set_flow_run_state(run.id, Scheduled(message=message), force=True)
        report.resubmitted.append(str(run.id))
        log.warning("run %s (%s) resubmitted: %s", run.name, run.id, message)


def recover_once(
    settings: Settings,
    *,
    store: Store | None = None,
    alert: Callable[[str, str], None] | None = None,
    now: datetime | None = None,
    stopped_since: dict[str, datetime] | None = None,
) -> RecoveryReport:
    """One pass of detection, resubmission, dead-lettering and record reconciliation.

    Uses the Prefect API of the current settings context; ``store`` None skips
    dead-lettering (attempts-exhausted runs wait) and reconciliation. ``alert(title,
    message)`` is called for each dead-lettered run. ``stopped_since`` (kept by the loop
    between passes) records when a run's process was first seen stopped: one stopped for
    ``recovery_hung_after_s`` is Crashed even if it never sent a heartbeat.

    Returns the :class:`RecoveryReport`.

    Raises:
        httpx.HTTPError, prefect exceptions: the Prefect API failed (the loop retries).
    """
    from prefect.client.orchestration import get_client

    now = now or datetime.now(UTC)
    report = RecoveryReport()
    with get_client(sync_client=True) as client:
        _detect_dead(client, settings, now, report, stopped_since)
        _resubmit_or_dead_letter(client, settings, now, report, store, alert)
        if store is not None:
            try:
                reconcile_records(client, store, report.reconciled)
            except Exception as e:  # the store may be down: the next pass reconciles
                report.problems.append(f"reconciliation skipped: {type(e).__name__}: {e}")
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
    while not stop.is_set():
        try:
            if store is None:
                store, alert = _store_and_alert(settings)
            report = recover_once(settings, store=store, alert=alert, stopped_since=stopped_since)
            if report.busy() or report.problems:
                log.info("recovery pass: %s", report)
            if any("reconciliation skipped" in p for p in report.problems):
                store = None  # reconnect next time
        except Exception as e:
            log.warning("recovery pass failed (%s: %s); retrying", type(e).__name__, e)
        stop.wait(settings.recovery_poll_s)


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
    settings = Settings()
    if args.once:
        store, alert = _store_and_alert(settings)
        log.info("%s", recover_once(settings, store=store, alert=alert))
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
