"""Prefect tasks of ``adaptive-retrain``: the one-at-a-time lock, freshness check, and the
before/after of each retrained model. The old-vs-new decision itself is the one deploy rule of
``ml.lifecycle``, made inside each ``train-model`` subflow.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NONE

from core.exceptions import DataQualityError, DuplicateRunError, InvalidInputError
from core.market import bar_length
from core.schemas.self_improvement import ModelRetrainOutcome
from core.schemas.training import TrainModelResult
from integrations.store import Store
from ml.deploy_rule import DEPLOYED
from ml.records import ModelRecord
from ml.registry import ModelRegistry

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
    docs = [
        d for d in store.deployed_model_docs(timeframe=timeframe) if d["model_type"] in model_types
    ]
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


def retrain_outcome(old: ModelRecord | None, trained: TrainModelResult) -> ModelRetrainOutcome:
    """The before/after of one retrained model, from the decision its ``train-model`` run made
    with the one deploy rule (``ml.deploy_rule.decide``): the new model, the model deployed before
    and the naive baselines scored on the same held-out bars that neither training nor epoch
    selection saw; deployed only when it beats all of them by more than the standard error.

    Returns:
        the outcome: ``deployed`` (new one deployed, old retired), ``kept_old`` (the old stays
        deployed), or ``candidate`` (nothing was deployed and the new one did not beat the
        baselines), with both accuracies on the slice and the reason.
    """
    d = trained.deployment
    if d is None:  # pragma: no cover - every successful train-model run decides
        raise DataQualityError(f"training {trained.task_id} made no deploy decision")
    old_row = next((c for c in d.comparisons if c.name == DEPLOYED), None)
    outcome = "deployed" if d.deployed else "kept_old" if old_row is not None else "candidate"
    return ModelRetrainOutcome(
        model_type=trained.model_type,
        symbol=trained.symbol,
        old_model_id=old.model_id if old else None,
        old_accuracy=old_row.accuracy if old_row else None,
        new_accuracy=d.candidate_accuracy,
        model_id=trained.model_id,
        deployed=d.deployed,
        outcome=outcome,
        reason=d.reason,
        window_start=d.holdout_start,
        window_end=d.holdout_end,
        window_samples=d.holdout_samples,
        decision=d,
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
        f"{k}: {o.outcome}: old {o.old_accuracy if o.old_accuracy is not None else 'none'} -> "
        f"new {o.new_accuracy} ({o.window_samples} held-out bars): {o.reason}"
        for k, o in outcomes.items()
    ]
    lines += [f"{k}: FAILED {e}" for k, e in errors.items()]
    return "\n".join(lines)
