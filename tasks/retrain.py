"""Prefect tasks of ``adaptive-retrain``: the one-at-a-time lock, freshness check, the
old-vs-new evaluation on the same held-out window and the deploy decision.

Thin wrappers around the store, ``ml.registry``/``ml.predictor`` and ``ml.metrics``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from core.exceptions import DataQualityError, DuplicateRunError, InvalidInputError
from core.market import bar_length
from core.schemas.self_improvement import ModelRetrainOutcome
from core.schemas.training import TrainModelResult
from integrations.store import Store
from ml.predictor import WARMUP_BARS, LoadedModel
from ml.registry import ModelRecord, ModelRegistry

LOCK_NAME = "adaptive-retrain"


def acquire_retrain_lock(store: Store, run_id: str, ttl_s: float, note: str) -> None:
    """Take the adaptive-retrain lock for ``run_id``.

    Raises:
        DuplicateRunError: another adaptive retrain holds it (message names its run and start).
    """
    held = store.lock_acquire(LOCK_NAME, run_id, ttl_s, note=note)
    if held is not None:
        raise DuplicateRunError(
            f"Adaptive retraining already in progress (flow run {held.get('owner')}, started "
            f"{held.get('acquired_at')}, {held.get('note') or 'no details'}); only one runs at a "
            "time: wait for it to finish or cancel it"
        )


def release_retrain_lock(store: Store, run_id: str) -> None:
    """Release the lock if ``run_id`` holds it."""
    store.lock_release(LOCK_NAME, run_id)


@task(name="resolve-retrain-symbols", cache_policy=NONE)
def resolve_symbols(
    store: Store, symbols: list[str] | None, model_types: list[str], timeframe: str
) -> list[str]:
    """The symbols to retrain: ``symbols`` when given, else those with a deployed model of
    one of ``model_types``.

    Raises:
        InvalidInputError: none given and none deployed.
    """
    if symbols:
        return list(dict.fromkeys(s.upper() for s in symbols))
    docs = store.models_find(
        {"status": "deployed", "timeframe": timeframe, "model_type": {"$in": model_types}}
    )
    found = sorted({d["symbol"] for d in docs})
    if not found:
        raise InvalidInputError(
            f"No deployed {'/'.join(model_types)} {timeframe} model to retrain: pass symbols"
        )
    return found


@task(name="check-data-fresh", cache_policy=NONE)
def check_data_fresh(
    store: Store, symbol: str, timeframe: str, days: int, max_age_h: float
) -> datetime:
    """Check the newest candle of ``symbol`` is recent and ``days`` of data exist.

    Returns the newest bar's open time.

    Raises:
        DataQualityError: no candles, or the newest is older than ``max_age_h`` hours ("stale").
    """
    newest = store.load_candles(symbol, timeframe, last_n=1)
    if newest.empty:
        raise DataQualityError(
            f"No {timeframe} candles of {symbol}: ingest market data before retraining"
        )
    last = newest.index[-1].to_pydatetime()
    age_h = (datetime.now(UTC) - last - bar_length(timeframe)).total_seconds() / 3600
    if age_h > max_age_h:
        raise DataQualityError(
            f"Stale data: the newest {symbol} {timeframe} candle opened {last:%Y-%m-%d %H:%M} UTC, "
            f"{age_h:.0f} h ago (limit {max_age_h:g} h); ingest fresh market data before "
            f"retraining on the last {days} days"
        )
    return last


def window_accuracy(model: LoadedModel, candles: pd.DataFrame, window_start: int) -> dict[str, Any]:
    """Score ``model`` on bars ``candles[window_start:]`` only; earlier bars are indicator
    and lookback history.

    Returns ml.metrics.classification_metrics of the window (accuracy, n_samples, ...).
    """
    from ml.features import make_labels
    from ml.metrics import classification_metrics

    p = model.predict_up_probabilities(candles)
    y = make_labels(candles["close"].to_numpy(np.float64), model.spec.horizon_bars)
    ok = np.isfinite(p) & np.isfinite(y)
    ok[:window_start] = False
    return classification_metrics(y[ok], p[ok])


def deploy_decision(old: float | None, new: float, margin: float) -> tuple[bool, str]:
    """Deploy when there is no old model, or ``new - old >= margin`` and ``new > old``.

    Returns (deploy, reason), e.g. (False, "not deployed: new accuracy 0.58 < old 0.62").
    """
    if old is None:
        return True, f"deployed: new accuracy {new:.2f}, no model was deployed before"
    if new > old and new - old >= margin - 1e-12:
        return True, f"deployed: new accuracy {new:.2f} > old {old:.2f}"
    if new < old:
        return False, f"not deployed: new accuracy {new:.2f} < old {old:.2f}"
    return False, (
        f"not deployed: new accuracy {new:.2f} does not beat old {old:.2f} "
        f"by the required margin {margin:.2f}"
    )


@task(name="compare-and-deploy", cache_policy=NONE)
def compare_and_deploy(
    store: Store,
    registry: ModelRegistry,
    old: ModelRecord | None,
    trained: TrainModelResult,
    margin: float,
    run_id: str,
) -> ModelRetrainOutcome:
    """Evaluate the old (deployed before the retrain) and the new model on the SAME newest
    held-out window (the new model's validation span), then deploy the new one (the old is
    archived) or leave it a candidate.

    Returns the outcome with both accuracies and the reason.
    """
    logger = get_run_logger()
    new = registry.get(trained.model_id or "")
    n_window = int(trained.training_results.validation_samples or 0)
    if n_window <= 0:
        raise DataQualityError(f"training of {new.model_id} reported no held-out samples")
    lookback = max(
        int(new.feature_spec.get("lookback", 0)),
        int(old.feature_spec.get("lookback", 0)) if old else 0,
    )
    candles = store.load_candles(
        new.symbol, new.timeframe, last_n=n_window + lookback + WARMUP_BARS
    )
    start = max(0, len(candles) - n_window)
    new_m = window_accuracy(registry.load(new), candles, start)
    old_m = window_accuracy(registry.load(old), candles, start) if old else None
    new_acc = round(float(new_m["accuracy"]), 4)
    old_acc = round(float(old_m["accuracy"]), 4) if old_m else None
    deploy, reason = deploy_decision(old_acc, new_acc, margin)
    if deploy and new.status != "deployed":
        registry.deploy(new.model_id, by=f"adaptive-retrain {run_id}")  # archives the old
    logger.info(
        "%s %s: old %s new %s on %d held-out bars -> %s",
        new.model_type,
        new.symbol,
        old_acc,
        new_acc,
        new_m["n_samples"],
        reason,
    )
    return ModelRetrainOutcome(
        model_type=new.model_type,
        symbol=new.symbol,
        old_model_id=old.model_id if old else None,
        old_accuracy=old_acc,
        new_accuracy=new_acc,
        model_id=new.model_id,
        deployed=deploy,
        reason=reason,
        window_start=candles.index[start].to_pydatetime(),
        window_end=candles.index[-1].to_pydatetime(),
        window_samples=int(new_m["n_samples"]),
    )


def build_registry(store: Store) -> ModelRegistry:
    """The model registry of the "model-store" block.

    Raises:
        ConfigurationError: the block is missing.
    """
    from blocks.loader import load_block
    from blocks.model_store import ModelStoreBlock

    block = load_block(ModelStoreBlock)
    return ModelRegistry(store, Path(block.directory), block.get_key())


def retrain_summary(outcomes: dict[str, ModelRetrainOutcome], errors: dict[str, str]) -> str:
    """Before/after lines for the notification. Returns the text."""
    lines = [
        f"{k}: old {o.old_accuracy if o.old_accuracy is not None else 'none'} -> new "
        f"{o.new_accuracy} ({o.window_samples} held-out bars): {o.reason}"
        for k, o in outcomes.items()
    ]
    lines += [f"{k}: FAILED {e}" for k, e in errors.items()]
    return "\n".join(lines)
