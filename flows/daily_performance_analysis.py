"""``daily-performance-analysis`` (01:00 UTC): the last 7 days of closed trades, judged.

Steps: closed trades (engine API or ``trades``; tasks.monitoring.fetch_closed_trades) ->
integrations.reports.performance_metrics / performance_status (overall and per strategy), and
the deployed models' live record from the prediction ledger (tasks.live; a decayed model is
named in the reasons) ->
CRITICAL: start the ``llm-self-analysis`` deployment (tasks.monitoring.trigger_self_analysis)
and notify; WARNING: notify. A strategy whose win rate is critical: start
``emergency-strategy-disable``; when that cannot be started the run notifies, then ends
Failed saying which strategies stay enabled.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger

from core.exceptions import BotAIError, JobFailedError
from core.schemas.monitoring import PerformanceParameters, PerformanceResult
from core.settings import load_settings
from integrations.reports import (
    performance_metrics,
    performance_status,
    split_by_strategy,
    trade_profit_pct,
)
from tasks.live import deployed_live_figures
from tasks.monitoring import fetch_closed_trades, trigger_self_analysis
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result
from tasks.strategy_control import critical_strategies, trigger_strategy_disable


@flow(name="daily-performance-analysis", validate_parameters=True, timeout_seconds=300)
def daily_performance_analysis(
    params: PerformanceParameters = PerformanceParameters(),  # noqa: B008
) -> PerformanceResult:
    """Judge recent trading. Returns metrics, status, per-strategy metrics and
    ``gpt4_analysis_triggered``; fewer than ``Settings.perf_min_trades`` trades give
    ``INSUFFICIENT_DATA`` (no trigger, no alert).

    Raises:
        JobFailedError: a strategy's win rate is critical but the emergency disable could
            not be started (after the notification; ``.result`` holds the analysis).
    """
    from blocks.loader import load_store

    logger = get_run_logger()
    settings = load_settings()
    end = datetime.now(UTC)
    start = end - timedelta(days=params.window_days or settings.perf_window_days)
    store = load_store()
    trades = fetch_closed_trades(params.source, start, end, store)
    profits = [p for t in trades if (p := trade_profit_pct(t)) is not None]
    if len(profits) < len(trades):
        logger.warning("%d trades without a profit %% ignored", len(trades) - len(profits))
    metrics = performance_metrics(profits)
    thresholds = dict(
        min_trades=settings.perf_min_trades,
        critical_win_rate_pct=settings.perf_critical_win_rate_pct,
        warning_win_rate_pct=settings.perf_warning_win_rate_pct,
        critical_sharpe=settings.perf_critical_sharpe,
        warning_sharpe=settings.perf_warning_sharpe,
    )
    status, reasons = performance_status(metrics, **thresholds)
    result = PerformanceResult(
        status=status,  # type: ignore[arg-type]
        metrics=metrics,
        per_strategy={k: performance_metrics(v) for k, v in split_by_strategy(trades).items()},
        reasons=reasons,
        model_live=deployed_live_figures(store),
        window_start=start,
        window_end=end,
    )
    for m in result.model_live:  # live predictions, beside the trades
        if m.decayed:
            result.reasons.append(f"model {m.model_id} ({m.symbol}) decayed: {m.reasons[0]}")
    logger.info(
        "performance %s: %d trades, win rate %s%%, Sharpe %s, profit factor %s, max DD %s%% %s",
        status,
        metrics.trades,
        metrics.win_rate,
        metrics.sharpe_ratio,
        metrics.profit_factor,
        metrics.max_drawdown_pct,
        reasons,
    )
    if status == "CRITICAL":
        triggered, run_id, note = trigger_self_analysis(
            settings.self_analysis_deployment, metrics, reasons
        )
        result.gpt4_analysis_triggered = triggered
        result.analysis_flow_run_id = run_id
        result.analysis_note = note
    failing = critical_strategies(
        result.per_strategy, settings.strategy_critical_win_rate_pct, settings.perf_min_trades
    )
    disable_error: str | None = None
    if failing:  # TC-ASYNC-059: disable a strategy whose win rate is critical
        result.strategies_to_disable = failing
        try:
            run_id, note = trigger_strategy_disable(settings.emergency_disable_deployment, failing)
            result.strategy_disable_run_id = run_id
        except BotAIError as e:  # recorded and announced below, then the run fails
            disable_error = note = f"Emergency disable NOT started: {e}"
            logger.error(note)
        result.strategy_disable_note = note
        result.reasons.append(note)
    if params.notify and (status in ("CRITICAL", "WARNING") or disable_error):
        per = "\n".join(
            f"  {k}: {m.trades} trades, win rate {m.win_rate}%"
            for k, m in result.per_strategy.items()
        )
        message = (
            f"Last {(end - start).days} days: {metrics.trades} trades, win rate "
            f"{metrics.win_rate}%, avg {metrics.avg_profit_pct}%, Sharpe {metrics.sharpe_ratio}, "
            f"profit factor {metrics.profit_factor}, max drawdown {metrics.max_drawdown_pct}%\n"
            f"{'; '.join(result.reasons)}\n{per}\n{result.analysis_note or ''}"
        )
        result.notifications.append(
            send_notification(
                build_notifier(store, settings),
                "critical" if status == "CRITICAL" or disable_error else "warning",
                f"Trading performance {status}: {'; '.join(result.reasons)}",
                message,
                dedupe_key=f"performance:{status}:{end.date()}",
            )
        )
    save_task_result(result, store)  # what was (not) done, for every caller
    if disable_error:
        raise JobFailedError(
            f"Performance analysis done ({status}), but {disable_error}", result=result
        )
    return result
