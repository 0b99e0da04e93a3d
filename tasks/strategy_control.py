"""Prefect tasks of ``emergency-strategy-disable`` and ``strategy-enable``: engine calls and
the ``strategy_state`` record.

Engine contract (ours; see docs/trading-engine-api.md, "Strategy control"), paths from
Settings (``engine_strategy_disable_path``, ``engine_cancel_signals_path``,
``engine_strategy_enable_path``), bodies JSON, answers in the engine envelope:

* ``POST /api/strategies/{name}/disable`` ``{reason, by}`` -> ``{name, enabled: false}``
* ``POST /api/strategies/{name}/signals/cancel`` ``{reason}`` -> ``{name, cancelled: int}``
* ``POST /api/strategies/{name}/enable`` ``{reviewer, note}`` -> ``{name, enabled: true}``
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from core.exceptions import BotAIError, NotFoundError, ServiceUnavailableError
from core.schemas.self_improvement import StrategyOutcome
from core.settings import Settings
from integrations.store import Store
from integrations.trading_engine import TradingEngineClient
from tasks.retry import retry_only_retryable


def _path(template: str, name: str) -> str:
    from urllib.parse import quote

    return template.format(name=quote(name, safe=""))


@task(name="disable-strategy", cache_policy=NONE)
def disable_strategy(
    client: TradingEngineClient,
    strategy: str,
    reason: str,
    by: str,
    settings: Settings,
    deadline: float | None = None,
) -> StrategyOutcome:
    """Disable ``strategy`` on the engine, then cancel its pending signals, all by ``deadline``.

    Args:
        deadline: ``time.monotonic()`` value bounding both engine calls with their retries
            (the client's own retries, no task retries: the deadline is the bound).

    Returns:
        the outcome, never raising for the engine's trouble: ``disabled`` (signals
        cancelled), ``disabled_signals_not_cancelled`` or ``not_disabled``, with the error.
    """
    logger = get_run_logger()
    t0 = time.monotonic()
    out = StrategyOutcome(strategy=strategy, outcome="not_disabled")
    try:
        data = client._request(
            "POST",
            _path(settings.engine_strategy_disable_path, strategy),
            json={"reason": reason, "by": by},
            deadline=deadline,
        )
        if isinstance(data, dict) and bool(data.get("enabled", False)):
            raise ServiceUnavailableError(f"Trading engine still reports {strategy!r} enabled")
    except BotAIError as e:
        out.error = f"disable: {e}"
        out.elapsed_s = round(time.monotonic() - t0, 2)
        logger.error("strategy %s NOT disabled: %s", strategy, e)
        return out
    out.enabled, out.outcome = False, "disabled_signals_not_cancelled"
    try:
        cancelled = client._request(
            "POST",
            _path(settings.engine_cancel_signals_path, strategy),
            json={"reason": reason},
            deadline=deadline,
        )
    except BotAIError as e:
        out.error = f"cancel pending signals: {e}"
        logger.error("strategy %s disabled, pending signals NOT cancelled: %s", strategy, e)
    else:
        out.signals_cancelled = (
            int(cancelled.get("cancelled", 0)) if isinstance(cancelled, dict) else 0
        )
        out.outcome = "disabled"
        logger.warning(
            "strategy %s disabled, %d pending signals cancelled", strategy, out.signals_cancelled
        )
    out.elapsed_s = round(time.monotonic() - t0, 2)
    return out


@task(
    name="enable-strategy",
    retries=2,
    retry_delay_seconds=exponential_backoff(1),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def enable_strategy(
    client: TradingEngineClient, strategy: str, reviewer: str, note: str, settings: Settings
) -> StrategyOutcome:
    """Enable ``strategy`` on the engine. Returns the outcome (``enabled`` True).

    Raises:
        ServiceUnavailableError / PeerRejectedError: as :meth:`TradingEngineClient._request`.
    """
    data = client._request(
        "POST",
        _path(settings.engine_strategy_enable_path, strategy),
        json={"reviewer": reviewer, "note": note},
    )
    enabled = bool(data.get("enabled", True)) if isinstance(data, dict) else True
    return StrategyOutcome(strategy=strategy, enabled=enabled)


def record_disabled(
    store: Store, outcome: StrategyOutcome, reason: str, by: str, run_id: str
) -> dict[str, Any]:
    """Write the whole ``strategy_state`` document of a disabled strategy.

    Returns the document: {strategy, enabled, reason, disabled_at, by, signals_cancelled,
    task_id, history}.
    """
    previous = store.strategy_state_get(outcome.strategy) or {}
    now = datetime.now(UTC)
    doc = {
        "strategy": outcome.strategy,
        "enabled": False,
        "reason": reason,
        "disabled_at": now,
        "by": by,
        "signals_cancelled": outcome.signals_cancelled,
        "signals_cancel_error": outcome.error,
        "task_id": run_id,
        "history": [
            *previous.get("history", []),
            {"action": "disable", "at": now, "by": by, "reason": reason, "task_id": run_id},
        ],
    }
    store.strategy_state_save(doc)
    return doc


def record_enabled(
    store: Store, strategy: str, reviewer: str, note: str, run_id: str
) -> dict[str, Any]:
    """Write the whole ``strategy_state`` document of a re-enabled strategy, keeping the last
    disable's reason. Returns the document (``enabled``, ``reviewed_by``, ``review_note``,
    ``enabled_at``)."""
    previous = store.strategy_state_get(strategy) or {}
    now = datetime.now(UTC)
    doc = {
        **{k: v for k, v in previous.items() if k != "history"},
        "strategy": strategy,
        "enabled": True,
        "reviewed_by": reviewer,
        "review_note": note,
        "enabled_at": now,
        "task_id": run_id,
        "history": [
            *previous.get("history", []),
            {"action": "enable", "at": now, "by": reviewer, "note": note, "task_id": run_id},
        ],
    }
    store.strategy_state_save(doc)
    return doc


def critical_strategies(
    per_strategy: dict[str, Any], threshold_pct: float, min_trades: int
) -> dict[str, str]:
    """Strategies whose win rate is below ``threshold_pct`` over at least ``min_trades`` trades.

    Args:
        per_strategy: {name: PerformanceMetrics} of the analysis window.

    Returns:
        {name: reason}, e.g. {"rsi": "Win rate 40% (critical threshold 45%)"}.
    """
    out: dict[str, str] = {}
    for name, m in per_strategy.items():
        if m.trades >= min_trades and m.win_rate is not None and m.win_rate < threshold_pct:
            out[name] = f"Win rate {m.win_rate:g}% (critical threshold {threshold_pct:g}%)"
    return out


@task(name="trigger-strategy-disable", cache_policy=NONE)
def trigger_strategy_disable(deployment: str, reasons: dict[str, str]) -> tuple[str, str]:
    """Start ``emergency-strategy-disable`` for the strategies in ``reasons`` without waiting.

    Returns:
        (flow-run id, a note saying what was started).

    Raises:
        NotFoundError: the deployment does not exist (nothing started; the message names
            the strategies left enabled and the deployment to create).
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    names = list(reasons)
    reason = (
        reasons[names[0]] if len(names) == 1 else "; ".join(f"{n}: {r}" for n, r in reasons.items())
    )
    params = {"strategies": names, "reason": reason, "by": "daily-performance-analysis"}
    try:
        run = run_deployment(
            name=deployment, parameters={"params": params}, timeout=0, tags=["win-rate-critical"]
        )
    except ObjectNotFound:
        raise NotFoundError(
            f"Deployment {deployment!r} is not deployed: {', '.join(names)} NOT disabled "
            f"({reason}); deploy it (prefect.yaml) or set BOTAI_EMERGENCY_DISABLE_DEPLOYMENT"
        ) from None
    note = f"emergency-strategy-disable started for {', '.join(names)} ({reason}): run {run.id}"
    get_run_logger().warning(note)
    return str(run.id), note
