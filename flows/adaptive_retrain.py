"""``adaptive-retrain``: retrain models and deploy only those that beat the deployed one.

Steps: one at a time (a lock in ``locks``; a second run is rejected with DuplicateRunError) ->
symbols (given, or those with a deployed model) -> data freshness (newest candle within
``Settings.retrain_max_data_age_h``) -> for each symbol and model type: ``train-model`` as a
subflow on the last ``days_of_data`` (60) days. Each subflow takes one of the platform's
training slots (global concurrency limit ``ml-training``) like any other training, and makes
the deploy decision with the one rule of ``ml.lifecycle``: the new model, the old one and the
naive baselines scored on the newest bars, held out before training; deployed only when it
beats all of them by more than the standard error (and the old by ``min_improvement``) ->
``retrain_history`` -> notification with before/after accuracy.

Keeping the old model is a success (``outcome="kept_old"``). A run in which every training
failed saves its history, notifies, and then ends Failed with the reasons.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from core.exceptions import TrainingError
from core.schemas.self_improvement import (
    AdaptiveRetrainParams,
    AdaptiveRetrainResult,
    ModelRetrainOutcome,
)
from core.schemas.training import HARD_TIME_LIMIT_S, TrainModelParams
from core.settings import load_settings
from flows.train_model import train_model
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result
from tasks.retrain import (
    acquire_retrain_lock,
    build_registry,
    check_data_fresh,
    release_retrain_lock,
    resolve_symbols,
    retrain_outcome,
    retrain_summary,
)


@flow(name="adaptive-retrain", validate_parameters=True, timeout_seconds=3 * HARD_TIME_LIMIT_S)
def adaptive_retrain(params: AdaptiveRetrainParams) -> AdaptiveRetrainResult:
    """Retrain ``params.model_types`` and deploy the improved ones.

    Returns an :class:`AdaptiveRetrainResult` (``models`` keyed by type, or ``type/SYMBOL``
    with several symbols). Raises DuplicateRunError (another adaptive retrain runs),
    DataQualityError (stale data), InvalidInputError (nothing to retrain), TrainingError
    (every training failed, after history and notification); a failing training is reported
    in ``errors`` and the others go on (status ``partial``).
    """
    from blocks.loader import load_store

    logger = get_run_logger()
    settings = load_settings()
    run_id = str(flow_run.get_id())
    store = load_store()
    days = params.days_of_data or settings.retrain_days_of_data
    margin = (
        params.min_improvement
        if params.min_improvement is not None
        else settings.retrain_min_improvement
    )
    acquire_retrain_lock(
        store, run_id, settings.retrain_lock_ttl_s, note="+".join(params.model_types)
    )
    try:
        symbols = resolve_symbols(store, params.symbols, params.model_types, params.timeframe)
        for symbol in symbols:  # every check before any training
            check_data_fresh(store, symbol, params.timeframe, days, settings.retrain_max_data_age_h)
        registry = build_registry(store)  # reads the deployed (old) models
        outcomes: dict[str, ModelRetrainOutcome] = {}
        errors: dict[str, str] = {}
        for symbol in symbols:
            for model_type in params.model_types:
                key = model_type if len(symbols) == 1 else f"{model_type}/{symbol}"
                old = registry.deployed(symbol, params.timeframe, model_type)
                try:
                    trained = train_model(
                        TrainModelParams(
                            model_type=model_type,
                            symbol=symbol,
                            timeframe=params.timeframe,
                            days_of_data=days,
                            epochs=params.epochs,
                            batch_size=params.batch_size,
                            learning_rate=params.learning_rate,
                            units=params.units,
                            lookback=params.lookback,
                            validation_split=params.validation_split,
                            min_improvement=margin,
                            requested_by=f"adaptive-retrain {run_id}",
                        )
                    )
                    outcomes[key] = retrain_outcome(old, trained)
                except Exception as e:  # one model failing must not stop the others
                    errors[key] = f"{type(e).__name__}: {e}"
                    logger.error("retraining %s failed: %s", key, errors[key])
        status = "success" if not errors else ("partial" if outcomes else "failed")
        summary = retrain_summary(outcomes, errors)
        deployed = [k for k, o in outcomes.items() if o.deployed]
        notification = send_notification(
            build_notifier(store, settings),
            "info" if status == "success" else "warning",
            f"Adaptive retrain {status}: deployed {', '.join(deployed) or 'none'}",
            f"Reason: {params.reason or 'not given'}\n{summary}",
        )
        store.retrain_history_save(
            {
                "task_id": run_id,
                "created_at": datetime.now(UTC),
                "status": status,
                "reason": params.reason,
                "parameters": params.model_dump(),
                "days_of_data": days,
                "min_improvement": margin,
                "models": {k: o.model_dump() for k, o in outcomes.items()},
                "errors": errors,
            }
        )
        logger.info("adaptive retrain %s\n%s", status, summary)
        if status == "failed":  # nothing was retrained: the job did not do its work
            raise TrainingError(f"Adaptive retrain failed: every training failed: {summary}")
        result = AdaptiveRetrainResult(
            status=status,
            task_id=run_id,
            reason=params.reason,
            models=outcomes,
            errors=errors,
            notification=notification,
        )
        return save_task_result(result, store)
    except asyncio.CancelledError as e:  # the flow's timeout interrupts the body this way
        raise TrainingError(
            f"Adaptive retrain stopped at its hard time limit of {3 * HARD_TIME_LIMIT_S:g} s"
        ) from e  # Failed with "time limit", never Crashed
    finally:
        release_retrain_lock(store, run_id)
