"""What a chaos run (``bench/chaos.py``) reports: per run, whether it completed, was
dead-lettered, failed, was lost or ran twice; stale job records; per fault, how long the runs
it interrupted took to be detected, resubmitted and running again; and the machine load.
"""

from __future__ import annotations

import os
import statistics
from collections import Counter
from typing import TYPE_CHECKING, Any

from integrations.store import C

if TYPE_CHECKING:
    from bench.chaos import Chaos

FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def say(text: str) -> None:
    print(text, flush=True)


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


#: States of a run whose process exists or is being started (what a fault can interrupt).
EXECUTING = {"RUNNING", "PENDING"}
#: An interruption (Crashed or Failed) later than this after a fault is not blamed on it.
INTERRUPT_WINDOW_S = 180.0


def recovery_times(
    chaos: Chaos, faults: list[tuple[float, str, list[str]]]
) -> list[dict[str, Any]]:
    """Per fault, over the runs that were executing (Running/Pending) at the kill and were
    interrupted by it (a Crashed or Failed state within :data:`INTERRUPT_WINDOW_S`):
    seconds from the kill to the interruption being recorded (detected), to the run being
    scheduled again (resubmitted) and to it running again or ending (recovered). Runs that
    rode the fault out (no interruption) and queued runs are counted apart, not timed.

    Returns:
        one dict per fault: what, executing, interrupted, detected_s, resubmitted_s,
        recovered_s (worst run of the fault; None when no run was interrupted).
    """
    from uuid import UUID

    from prefect.client.orchestration import get_client

    out = []
    with get_client(sync_client=True) as client:
        histories: dict[str, list[Any]] = {}
        for at, what, active in faults:
            row: dict[str, Any] = {"what": what, "executing": len(active), "interrupted": 0}
            worst = {"detected_s": None, "resubmitted_s": None, "recovered_s": None}
            for run_id in active:
                if run_id not in histories:
                    histories[run_id] = sorted(
                        client.read_flow_run_states(UUID(run_id)), key=lambda s: s.timestamp
                    )
                later = [s for s in histories[run_id] if s.timestamp.timestamp() > at]
                broke = next((s for s in later if s.type.value in ("CRASHED", "FAILED")), None)
                if broke is None or broke.timestamp.timestamp() - at > INTERRUPT_WINDOW_S:
                    continue  # kept running through the fault
                row["interrupted"] += 1
                t_broke = broke.timestamp.timestamp()
                after = [s for s in later if s.timestamp.timestamp() > t_broke]
                again = next((s for s in after if s.type.value == "SCHEDULED"), None)
                back = next(
                    (s for s in after if s.type.value == "RUNNING" or s.type.value in FINAL),
                    None,
                )
                marks = {
                    "detected_s": t_broke,
                    "resubmitted_s": again.timestamp.timestamp() if again else None,
                    "recovered_s": back.timestamp.timestamp() if back else None,
                }
                if back is None and broke.name == "DeadLettered":
                    marks["recovered_s"] = t_broke  # ended: dead-lettered on its last attempt
                for key, t in marks.items():
                    if t is not None:
                        worst[key] = max(worst[key] or 0.0, t - at)
            out.append({**row, **worst})
    return out


def report(chaos: Chaos, ids, kind_of, faults, elapsed_s: float) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    states = chaos.runs(ids)
    outcome: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    twice = []
    with get_client(sync_client=True) as client:
        for i in ids:
            run = states.get(i)
            name = run.state.name if run and run.state else "missing"
            outcome[name] += 1
            if name in ("DeadLettered", "Failed"):
                reasons[f"{name}: {kind_of[i]}: {(run.state.message or '')[:90]}"] += 1
            completed = [
                s for s in client.read_flow_run_states(UUID(i)) if s.type.value == "COMPLETED"
            ]
            docs = len(
                chaos.store.jobs.find(
                    C.BACKTEST_RESULTS, {"task_id": i}, "reading backtest results"
                )
            )
            models = len(chaos.store.models.models_find({"training_task_id": i}))
            if len(completed) > 1 or docs > 1 or models > 1:
                twice.append(i)
    stale = 0
    for doc in chaos.store.jobs.records_in_status(C.TRAINING_JOBS, ["running", "queued"]):
        run = states.get(doc["task_id"])
        if run and run.state.type.value in FINAL:
            stale += 1
    ended = ("Completed", "DeadLettered", "Failed", "TimedOut", "Cancelled")
    in_flight = ("Running", "Pending", "Submitting", "Scheduled", "Late", "AwaitingRetry")
    lost = sum(n for name, n in outcome.items() if name not in ended + in_flight)
    unfinished = sum(n for name, n in outcome.items() if name in in_flight)
    times = recovery_times(chaos, faults)
    say(f"\nchaos result after {elapsed_s:.0f} s ({load()}):")
    say(f"  runs accepted:   {len(ids)} ({dict(Counter(kind_of.values()))})")
    say(f"  completed:       {outcome['Completed']}")
    say(f"  dead-lettered:   {outcome['DeadLettered']}")
    say(f"  failed:          {outcome['Failed']}")
    for r, n in reasons.most_common():
        say(f"    {n} x {r}")
    say(f"  lost:            {lost}  (Crashed and not recovered, or missing)")
    say(f"  unfinished at the deadline (still queued/running): {unfinished}")
    say(f"  final states:    {dict(outcome)}")
    say(f"  executed twice:  {len(twice)} {twice}")
    say(f"  stale records:   {stale}")
    say(
        "  recovery per fault (worst interrupted run; from the kill; "
        "targets: detected <= 60 s, resubmitted <= 120 s):"
    )
    for key in ("detected_s", "resubmitted_s", "recovered_s"):
        secs = [row[key] for row in times if row[key] is not None]
        if secs:
            say(
                f"    {key[:-2]:<12} p50 {statistics.median(secs):6.1f} s, "
                f"max {max(secs):6.1f} s over {len(secs)} faults"
            )
    for row in times:
        shown = ", ".join(
            f"{k[:-2]} {row[k]:.1f} s"
            for k in ("detected_s", "resubmitted_s", "recovered_s")
            if row[k] is not None
        )
        say(
            f"    {row['what']}: {row['interrupted']} of {row['executing']} executing runs "
            f"interrupted{'; ' + shown if shown else ''}"
        )
