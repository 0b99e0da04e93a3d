"""Helpers of the prediction-ledger tests: serve forecasts of a real model over generated
hours the model never saw, as predict-price serves them, into the ledger."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from integrations.store import Store
from ml.ledger import price_entries
from ml.prediction import predict_prices
from ml.registry import ModelRegistry
from tests.ml.helpers import deploy_small_model


def trained_model(
    store: Store, model_dir: Path, key: bytes, train: pd.DataFrame, symbol: str, epochs: int = 6
):  # noqa: ANN201 - ml.predictor.LoadedModel
    """A tiny GRU fitted on ``train`` (registered and deployed for ``symbol``), its record
    saying its data ended at ``train``'s last hour. Returns the loaded model."""
    # the same model in every run, whatever the process did before
    record = deploy_small_model(
        store, model_dir, key, train, symbol=symbol, epochs=epochs, seed=len(symbol)
    )
    doc = store.col("models").find_one({"model_id": record.model_id})
    doc["metrics"] = {**doc["metrics"], "data_end": train.index[-1].isoformat()}
    store.col("models").replace_one({"_id": doc["_id"]}, doc)
    registry = ModelRegistry(store, model_dir, key)
    return registry.load(registry.get(record.model_id))


def serve_forecasts(
    store: Store,
    model,  # noqa: ANN001 - ml.predictor.LoadedModel
    candles: pd.DataFrame,
    origins: np.ndarray,
    horizon_hours: int,
    run_prefix: str,
    coverage_bars: int = 720,
) -> int:
    """Forecast from every origin index (only candles up to it), recording each forecast's
    entries as the predict-price flow does. Returns the entries written."""
    written = 0
    for t in origins:
        result = predict_prices(
            model,
            candles.iloc[: int(t) + 1],
            horizon_hours,
            coverage_bars=coverage_bars,
            coverage_step=24,
        )
        result = result.model_copy(update={"task_id": f"{run_prefix}-{int(t)}"})
        entries = price_entries(
            result, model_version=model.record.version, made_at=datetime.now(UTC)
        )
        written += store.ledger.entries_record(entries)
    return written


def serve_signals(
    store: Store,
    model,  # noqa: ANN001 - ml.predictor.LoadedModel
    candles: pd.DataFrame,
    first: int,
    run_prefix: str,
) -> int:
    """A bulk-analysis signal of the model at every hour from index ``first`` (one batched
    forward pass: the same P(up) each hour's analysis would compute), recorded as the
    bulk-analysis flow records them. Returns the entries written."""
    from core.schemas.analysis import BulkAnalysisResult, SymbolAnalysis
    from ml.analysis import SignalConfig, signal_from_score
    from ml.ledger import signal_entries

    p_up = model.predict_up_probabilities(candles)
    record = model.record
    doc = {
        "version": record.version,
        "horizon_bars": record.horizon_bars,
        "model_type": record.model_type,
    }
    entries = []
    for t in range(first, len(candles)):
        signal, confidence = signal_from_score(2 * p_up[t] - 1, SignalConfig().threshold)
        analysis = SymbolAnalysis(
            symbol=record.symbol,
            signal=signal,
            confidence=confidence,
            price=float(candles["close"].iloc[t]),
            timestamp=candles.index[t].to_pydatetime(),
            indicators={},
            source="model",
            model_id=record.model_id,
            up_probability=float(p_up[t]),
        )
        result = BulkAnalysisResult(
            timeframe="1h",
            total_symbols=1,
            symbols_analyzed=1,
            failed_symbols=[],
            results=[analysis],
            batches=1,
            elapsed_s=0.0,
        )
        entries += signal_entries(
            result, f"{run_prefix}-{t}", {record.symbol: doc}, made_at=datetime.now(UTC)
        )
    return store.ledger.entries_record(entries)
