"""The tables of bench/bench_gateway.py: one row per job with the load beside every figure,
and the targets (send -> answered p95 <= 150 ms, send -> Running p95 <= 1 s, send ->
Completed p95 <= 1.5 s for predict-price and the backtest) over all samples and over those
taken at load <= 4."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Any

SHORT = ("predict", "backtest", "bulk")
TARGET_ANSWER_S, TARGET_RUNNING_S, TARGET_DONE_S = 0.150, 1.0, 1.5


@dataclass
class Sample:
    """One request, times in seconds from the caller's send (None: not reached)."""

    job: str
    load: float
    status: int
    answered: float
    running: float | None = None
    completed: float | None = None
    created_to_running: float | None = None
    final: str | None = None
    task_id: str | None = None


@dataclass
class Phase:
    """The samples of one phase and its notes."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def pct(values: list[float], q: float) -> float:
    """The ``q`` percentile (0-100) of ``values`` (linear interpolation)."""
    import numpy as np

    return float(np.percentile(values, q))


def report(phases: list[Phase]) -> None:
    """Per phase and job: p50/p95 of each figure with the load beside it; the targets."""
    print(f"\nGateway from the caller's send ({os.cpu_count()} CPUs), load = 1-minute average:")
    for phase in phases:
        print(f"\n### {phase.name}" + ("; " + "; ".join(phase.notes) if phase.notes else ""))
        print(
            "| job | requests | accepted | send -> answered p50 / p95 / max "
            "| send -> Running p50 / p95 | send -> Completed p50 / p95 "
            "| created -> Running p50 / p95 | not completed | load mean (min-max) |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        anchor = None
        for job in (*SHORT, "train", "celery"):
            rows = [s for s in phase.samples if s.job == job]
            if not rows:
                continue
            ok = [s for s in rows if s.status == 202]
            ans = [s.answered for s in ok] or [float("nan")]
            run = [s.running for s in ok if s.running is not None]
            done = [s.completed for s in ok if s.completed is not None]
            c2r = [s.created_to_running for s in ok if s.created_to_running is not None]
            lost = [s for s in ok if job not in ("train",) and s.final not in ("COMPLETED", None)]
            lost += [s for s in ok if job in SHORT and s.final is None]
            loads = [s.load for s in rows]

            def two(v: list[float]) -> str:
                return f"{pct(v, 50):.3f} / {pct(v, 95):.3f} s" if v else "-"

            print(
                f"| {job} | {len(rows)} | {len(ok)} "
                f"| {pct(ans, 50):.3f} / {pct(ans, 95):.3f} / {max(ans):.3f} s "
                f"| {two(run)} | {two(done)} | {two(c2r)} | {len(lost)} "
                f"| {statistics.mean(loads):.1f} ({min(loads):.1f}-{max(loads):.1f}) |"
            )
            if job == "celery":
                anchor = pct(run, 50) if run else None
            for s in rows:
                if s.status != 202 and s.job != "celery":
                    print(f"  refused: {s.job} {s.final}")
        short = [s for s in phase.samples if s.job in SHORT and s.status == 202]
        if anchor and short:
            run50 = pct([s.running for s in short if s.running is not None], 50)
            print(
                f"  ratio send -> Running p50, gateway short jobs / Celery: {run50 / anchor:.0f}x"
            )
        if phase.name == "serial":
            _targets(phase.samples, "all loads")
            _targets([s for s in phase.samples if s.load <= 4.0], "samples at load <= 4")
        requests = [s for s in phase.samples if s.job != "celery"]
        if requests:
            accepted = sum(s.status == 202 for s in requests)
            slowest = max(s.answered for s in requests)
            print(
                f"  all gateway requests: {accepted}/{len(requests)} accepted "
                f"({100 * accepted / len(requests):.0f} %), slowest answer {slowest:.3f} s"
            )


def _targets(samples: list[Sample], label: str) -> None:
    """The targets of predict-price and the backtest over ``samples``."""
    for job in ("predict", "backtest", "bulk", "train"):
        ok = [s for s in samples if s.job == job and s.status == 202]
        if not ok:
            continue
        a = pct([s.answered for s in ok], 95)
        line = f"  {label}, {job} ({len(ok)}): answered p95 {a:.3f} s "
        line += f"({'met' if a <= TARGET_ANSWER_S else 'NOT met'} <= 0.150)"
        running = [s.running for s in ok if s.running is not None]
        done = [s.completed for s in ok if s.completed is not None]
        if running:
            r = pct(running, 95)
            line += (
                f", Running p95 {r:.2f} s ({'met' if r <= TARGET_RUNNING_S else 'NOT met'} <= 1)"
            )
        if done and job in ("predict", "backtest"):
            d = pct(done, 95)
            line += (
                f", Completed p95 {d:.2f} s ({'met' if d <= TARGET_DONE_S else 'NOT met'} <= 1.5)"
            )
        print(line)


def timeline(client: Any, sample: Sample) -> None:
    """Where one run's time went (``BENCH_TIMELINE=1``): its states and log lines, each as
    seconds after the run's creation."""
    from uuid import UUID

    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    run_id = UUID(sample.task_id)
    run = client.read_flow_run(run_id)
    t0 = run.created.timestamp()
    events = [
        (s.timestamp.timestamp() - t0, f"state {s.type.value} {s.name}")
        for s in client.read_flow_run_states(run_id)
    ]
    logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200)
    events += [(log.timestamp.timestamp() - t0, log.message[:110]) for log in logs]
    print(f"\n  timeline of {sample.job} run {run_id} (s after creation):")
    for at, what in sorted(events):
        print(f"    {at:7.3f}  {what}")
