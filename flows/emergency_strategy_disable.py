"""``emergency-strategy-disable``: stop one or several failing strategies now.

Steps: for each strategy, the engine disables it and cancels its pending signals
(tasks.strategy_control; contract in docs/trading-engine-api.md) -> ``strategy_state``
{strategy, enabled, reason, disabled_at, by, signals_cancelled} -> one URGENT notification
(Slack and e-mail). Started by hand or by ``daily-performance-analysis`` when a strategy's
win rate is below ``Settings.strategy_critical_win_rate_pct``.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from core.schemas.self_improvement import (
    StrategyDisableParams,
    StrategyDisableResult,
    StrategyOutcome,
)
from core.settings import Settings
from tasks.monitoring import load_engine_client
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result
from tasks.strategy_control import disable_strategy, record_disabled


@flow(name="emergency-strategy-disable", validate_parameters=True, timeout_seconds=300)
def emergency_strategy_disable(params: StrategyDisableParams) -> StrategyDisableResult:
    """Disable ``params.strategies``. Returns a :class:`StrategyDisableResult`: status
    success (all disabled), partial or failed (per-strategy errors in ``outcomes``); the
    notification is sent in every case."""
    from blocks.loader import load_store

    logger = get_run_logger()
    settings = Settings()
    run_id = str(flow_run.get_id())
    store = load_store()
    client = load_engine_client()
    outcomes: dict[str, StrategyOutcome] = {}
    for name in params.strategies:
        try:
            outcome = disable_strategy(client, name, params.reason, params.by, settings)
            record_disabled(store, outcome, params.reason, params.by, run_id)
        except Exception as e:  # the others must still be disabled
            outcome = StrategyOutcome(strategy=name, error=f"{type(e).__name__}: {e}")
            logger.error("could not disable %s: %s", name, outcome.error)
        outcomes[name] = outcome
    disabled = [n for n, o in outcomes.items() if o.error is None]
    status = "success" if len(disabled) == len(outcomes) else ("partial" if disabled else "failed")
    result = StrategyDisableResult(
        status=status,
        task_id=run_id,
        reason=params.reason,
        strategies_disabled=disabled,
        pending_signals_cancelled=sum(o.signals_cancelled for o in outcomes.values()),
        outcomes=outcomes,
    )
    lines = [
        f"{n}: disabled, {o.signals_cancelled} pending signals cancelled"
        if o.error is None
        else f"{n}: NOT disabled ({o.error})"
        for n, o in outcomes.items()
    ]
    result.notification = send_notification(
        build_notifier(store, settings),
        "critical",
        f"URGENT: strategy disabled: {', '.join(disabled) or 'none'} ({params.reason})",
        f"Reason: {params.reason}\nBy: {params.by}\n"
        + "\n".join(lines)
        + "\nRe-enable after review with the strategy-enable flow (reviewer and note required).",
        urgent=True,
        dedupe_key=f"strategy-disable:{run_id}",
    )
    return save_task_result(result, store)
