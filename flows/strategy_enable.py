"""``strategy-enable``: re-enable a strategy after a manual review.

Steps: reviewer and note required (rejected before anything runs) -> the engine enables the
strategy (tasks.strategy_control) -> ``strategy_state`` records enabled, reviewed_by,
review_note, enabled_at (the last disable's reason kept) -> notification.
"""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from core.schemas.self_improvement import StrategyEnableParams, StrategyEnableResult
from core.settings import load_settings
from tasks.monitoring import load_engine_client
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result
from tasks.strategy_control import enable_strategy, record_enabled


@flow(name="strategy-enable", validate_parameters=True, timeout_seconds=120)
def strategy_enable(params: StrategyEnableParams) -> StrategyEnableResult:
    """Re-enable ``params.strategy``. Returns a :class:`StrategyEnableResult`.

    Raises:
        PeerRejectedError / ServiceUnavailableError: the engine refused or did not answer
            (nothing recorded).
    """
    from blocks.loader import load_store

    settings = load_settings()
    run_id = str(flow_run.get_id())
    store = load_store()
    enable_strategy(load_engine_client(), params.strategy, params.reviewer, params.note, settings)
    record_enabled(store, params.strategy, params.reviewer, params.note, run_id)
    send_notification(
        build_notifier(store, settings),
        "info",
        f"Strategy {params.strategy} re-enabled by {params.reviewer}",
        f"Review note: {params.note}",
    )
    result = StrategyEnableResult(
        status="success",
        task_id=run_id,
        strategy=params.strategy,
        reviewer=params.reviewer,
        note=params.note,
    )
    return save_task_result(result, store)
