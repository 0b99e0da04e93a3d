"""``emergency-strategy-disable``: stop one or several failing strategies now.

Steps: the URGENT alert (Slack and e-mail) goes out first, before any engine call, so a
hanging engine cannot delay it (TC-ASYNC-059: alert within 30 s) -> every strategy in
parallel: the engine disables it and cancels its pending signals (tasks.strategy_control;
contract in docs/trading-engine-api.md), all engine calls bounded by ``params.deadline_s`` ->
``strategy_state`` {strategy, enabled, reason, disabled_at, by, signals_cancelled} of each
disabled one -> a follow-up message and a table artifact with the per-strategy outcomes.
A run that did not disable every strategy (and cancel its signals) ends Failed with the
outcomes in its message. Started by hand or by ``daily-performance-analysis`` when a
strategy's win rate is below ``Settings.strategy_critical_win_rate_pct``.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from core.exceptions import BotAIError, JobFailedError
from core.schemas.self_improvement import (
    StrategyDisableParams,
    StrategyDisableResult,
    StrategyOutcome,
)
from core.settings import load_settings
from tasks.monitoring import load_engine_client
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result
from tasks.strategy_control import disable_strategy, record_disabled

_GRACE_S = 5.0  # a task's result is awaited this long past the deadline


def _line(o: StrategyOutcome) -> str:
    if o.outcome == "disabled":
        return f"{o.strategy}: disabled, {o.signals_cancelled} pending signals cancelled"
    if o.outcome == "disabled_signals_not_cancelled":
        return f"{o.strategy}: disabled, pending signals NOT cancelled ({o.error})"
    return f"{o.strategy}: NOT disabled ({o.error})"


@flow(name="emergency-strategy-disable", validate_parameters=True, timeout_seconds=300)
def emergency_strategy_disable(params: StrategyDisableParams) -> StrategyDisableResult:
    """Alert, then disable ``params.strategies`` within ``params.deadline_s``.

    Returns:
        a :class:`StrategyDisableResult` with status success (every strategy disabled, its
        pending signals cancelled and recorded).

    Raises:
        JobFailedError: any strategy not fully done (status partial or failed); raised after
            the disabled ones are recorded and the follow-up message is sent; the message
            lists every strategy's outcome and ``.result`` holds the result.
    """
    from blocks.loader import load_store

    t0 = time.monotonic()
    logger = get_run_logger()
    settings = load_settings()
    run_id = str(flow_run.get_id())
    names = ", ".join(params.strategies)
    try:
        store = load_store()
    except BotAIError as e:  # the alert must still go out
        logger.error("store unavailable, strategies will not be recorded: %s", e)
        store = None
    notifier = build_notifier(store, settings)
    alert = send_notification(
        notifier,
        "critical",
        f"URGENT: disabling strategy {names} ({params.reason})",
        f"Reason: {params.reason}\nBy: {params.by}\nDisabling now: {names}. "
        f"The outcome of each follows within {params.deadline_s:.0f} s.",
        urgent=True,
        dedupe_key=f"strategy-disable:{run_id}:alert",
    )
    alert_after_s = round(time.monotonic() - t0, 2)
    logger.warning("URGENT alert sent after %.1f s: %s", alert_after_s, alert.delivered)

    deadline = time.monotonic() + params.deadline_s
    outcomes: dict[str, StrategyOutcome] = {}
    try:
        client = load_engine_client()
    except BotAIError as e:
        for name in params.strategies:
            outcomes[name] = StrategyOutcome(strategy=name, outcome="not_disabled", error=str(e))
    else:
        futures = {
            name: disable_strategy.submit(
                client, name, params.reason, params.by, settings, deadline
            )
            for name in params.strategies
        }
        for name, fut in futures.items():
            try:
                wait_s = max(0.1, deadline + _GRACE_S - time.monotonic())
                outcomes[name] = fut.result(timeout=wait_s)
            except Exception as e:  # noqa: BLE001 - a stuck or crashed task: reported, not fatal
                outcomes[name] = StrategyOutcome(
                    strategy=name,
                    outcome="not_disabled",
                    error=f"no outcome by the deadline: {type(e).__name__}: {e}",
                )
    for name, o in outcomes.items():
        if o.outcome == "not_disabled" or store is None:
            continue
        try:
            record_disabled(store, o, params.reason, params.by, run_id)
            o.recorded = True
        except BotAIError as e:
            o.error = f"{o.error + '; ' if o.error else ''}not recorded: {e}"
            logger.error("strategy %s disabled but not recorded: %s", name, e)

    done = [n for n, o in outcomes.items() if o.outcome == "disabled" and o.recorded]
    disabled = [n for n, o in outcomes.items() if o.outcome != "not_disabled"]
    status = "success" if len(done) == len(outcomes) else ("partial" if disabled else "failed")
    lines = [_line(o) for o in outcomes.values()]
    summary = f"{len(done)} of {len(outcomes)} strategies fully disabled: " + "; ".join(lines)
    result = StrategyDisableResult(
        status=status,
        task_id=run_id,
        reason=params.reason,
        strategies_disabled=disabled,
        pending_signals_cancelled=sum(o.signals_cancelled for o in outcomes.values()),
        outcomes=outcomes,
        alert=alert,
        alert_after_s=alert_after_s,
        summary=summary,
    )
    result.notification = send_notification(
        notifier,
        "critical",
        f"URGENT: strategy disable {status.upper()}: {', '.join(disabled) or 'none'} disabled "
        f"({params.reason})",
        f"Reason: {params.reason}\nBy: {params.by}\n"
        + "\n".join(lines)
        + "\nRe-enable after review with the strategy-enable flow (reviewer and note required).",
        urgent=True,
        dedupe_key=f"strategy-disable:{run_id}:outcome",
    )
    create_table_artifact(
        key="emergency-strategy-disable",
        table=[
            {
                "strategy": o.strategy,
                "outcome": o.outcome,
                "signals_cancelled": o.signals_cancelled,
                "recorded": o.recorded,
                "elapsed_s": o.elapsed_s,
                "error": o.error or "",
            }
            for o in outcomes.values()
        ],
        description=f"{status}: {summary}",
    )
    result.elapsed_s = round(time.monotonic() - t0, 2)
    save_task_result(result, store)  # what was (not) done, for every caller
    if status != "success":
        raise JobFailedError(f"Emergency strategy disable {status}: {summary}", result=result)
    return result
