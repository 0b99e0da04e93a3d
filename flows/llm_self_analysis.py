"""``llm-self-analysis`` (03:00 UTC, and started by ``daily-performance-analysis`` on CRITICAL).

Steps: last ``window_days`` of closed trades (engine API; tasks.monitoring.fetch_closed_trades)
-> performance metrics and status (integrations.reports) -> deployed models' held-out
accuracy, their live record from the prediction ledger (tasks.live) and recent market
context (tasks.llm) -> skip when acceptable (unless
``force_analysis``) -> prompt stating the thresholds -> LLM answer (integrations.llm, 3
attempts, cost ledger, kill switch) or, when the LLM fails / is off, notify the admins and
take the rule-based fallback -> a retrain recommendation with confidence >= 0.75 (or a
fallback retrain) starts the ``adaptive-retrain`` deployment -> ``llm_analysis_history``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from core.exceptions import BotAIError
from core.schemas.self_improvement import (
    RETRAIN_TYPES,
    LLMCall,
    SelfAnalysisDecision,
    SelfAnalysisParams,
    SelfAnalysisResult,
)
from core.settings import load_settings
from integrations.llm import build_prompt, fallback_recommendation
from integrations.reports import performance_metrics, performance_status, trade_profit_pct
from tasks.live import deployed_live_figures
from tasks.llm import (
    accuracy_history,
    ask_llm,
    deployed_model_accuracy,
    market_context,
    start_adaptive_retrain,
)
from tasks.monitoring import fetch_closed_trades
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result


@flow(name="llm-self-analysis", validate_parameters=True, timeout_seconds=900)
def llm_self_analysis(
    params: SelfAnalysisParams = SelfAnalysisParams(),  # noqa: B008
) -> SelfAnalysisResult:
    """Ask the LLM whether models need retraining and act on it.

    Returns a :class:`SelfAnalysisResult`: status ``success`` (the LLM decided), ``fallback``
    (the LLM failed or is switched off; the rule decided) or ``skipped`` (performance
    acceptable, no ``force_analysis``).
    """
    from blocks.loader import load_store

    logger = get_run_logger()
    settings = load_settings()
    run_id = str(flow_run.get_id())
    store = load_store()
    end = datetime.now(UTC)
    start = end - timedelta(days=params.window_days)

    trades = fetch_closed_trades(params.source, start, end, store)
    metrics = performance_metrics([p for t in trades if (p := trade_profit_pct(t)) is not None])
    thresholds = dict(
        min_trades=settings.perf_min_trades,
        critical_win_rate_pct=settings.perf_critical_win_rate_pct,
        warning_win_rate_pct=settings.perf_warning_win_rate_pct,
        critical_sharpe=settings.perf_critical_sharpe,
        warning_sharpe=settings.perf_warning_sharpe,
    )
    status, reasons = performance_status(metrics, **thresholds)
    accuracy, symbols = deployed_model_accuracy(store, params.timeframe)
    low = sorted(t for t, a in accuracy.items() if a < settings.self_analysis_min_accuracy)
    live = deployed_live_figures(store, params.timeframe)
    decayed = sorted({m.model_type for m in live if m.decayed})
    result = SelfAnalysisResult(
        status="skipped",
        task_id=run_id,
        performance=metrics,
        performance_status=status,
        model_accuracy=accuracy,
        model_live=live,
    )
    history = {
        "task_id": run_id,
        "created_at": end,
        "performance": metrics.model_dump(),
        "performance_status": status,
        "model_accuracy": accuracy,
        "model_live": [m.model_dump() for m in live],
        "force_analysis": params.force_analysis,
    }

    ok = status in ("GOOD", "INSUFFICIENT_DATA") and not low and not decayed
    if not params.force_analysis and ok:
        result.skip_reason = (
            f"performance acceptable ({status}: {metrics.trades} trades, win rate "
            f"{metrics.win_rate}%, Sharpe {metrics.sharpe_ratio}), every deployed model at or "
            f"above accuracy {settings.self_analysis_min_accuracy:.2f} and none decayed on its "
            "live predictions; set force_analysis to ask"
        )
        logger.info("skipped: %s", result.skip_reason)
        store.llm_analysis_save({**history, "status": "skipped", "decision": result.skip_reason})
        return save_task_result(result, store)

    prompt = build_prompt(
        {**metrics.model_dump(), "status": status, "reasons": reasons},
        accuracy,
        market_context(store, symbols, params.timeframe),
        {
            **thresholds,
            "min_accuracy": settings.self_analysis_min_accuracy,
            "min_confidence": settings.self_analysis_min_confidence,
            "window_days": params.window_days,
        },
        accuracy_history(store, params.timeframe),
        [m.model_dump() for m in live],
    )
    call = LLMCall(model="", attempts=0)
    try:
        rec, call = ask_llm(store, prompt, run_id, settings)
        decided_by = "llm"
        result.status = "success"
        retrain_types = RETRAIN_TYPES.get(rec.recommendation, [])
        if rec.confidence < settings.self_analysis_min_confidence:
            retrain_types = []
    except BotAIError as e:
        result.llm_error = f"{type(e).__name__}: {e}"
        logger.error("LLM analysis failed, rule-based fallback decides: %s", result.llm_error)
        rec = fallback_recommendation(status, accuracy, settings.self_analysis_min_accuracy)
        decided_by = "fallback"
        result.status = "fallback"
        retrain_types = low if rec.recommendation != "NO_RETRAINING" else []
        if params.notify:
            result.notifications.append(
                send_notification(
                    build_notifier(store, settings),
                    "warning",
                    "LLM self-analysis failed: rule-based fallback used",
                    f"{result.llm_error}\nFallback decision: {rec.recommendation}. {rec.reasoning}",
                    urgent=True,
                    dedupe_key=f"llm-self-analysis-fallback:{run_id}",
                )
            )

    decision = SelfAnalysisDecision(
        **rec.model_dump(), decided_by=decided_by, retrain_model_types=retrain_types
    )
    if retrain_types:
        run, note = start_adaptive_retrain(
            settings.adaptive_retrain_deployment,
            retrain_types,
            f"llm-self-analysis {run_id} ({decided_by}): {rec.reasoning}",
        )
        decision.retrain_triggered = run is not None
        decision.retrain_flow_run_id = run
        if params.notify:
            result.notifications.append(
                send_notification(
                    build_notifier(store, settings),
                    "info" if run else "warning",
                    f"Self-analysis: {rec.recommendation} ({decided_by})",
                    f"{rec.reasoning}\n{note}",
                )
            )
    result.analysis = decision
    # every answer received is in the ledger, including invalid ones before a fallback
    spent = store.llm_costs_between(
        end - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
    )
    result.cost_usd = round(sum(d["cost_usd"] for d in spent if d.get("run_id") == run_id), 8)
    store.llm_analysis_save(
        {
            **history,
            "status": result.status,
            "prompt_summary": prompt[:600],
            "prompt_chars": len(prompt),
            "answer": rec.model_dump(),
            "decision": decision.model_dump(),
            "llm_error": result.llm_error,
            "model": call.model or None,
            "attempts": call.attempts,
            "prompt_tokens": call.prompt_tokens,
            "completion_tokens": call.completion_tokens,
            "cost_usd": result.cost_usd,
        }
    )
    return save_task_result(result, store)
