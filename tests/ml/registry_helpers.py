"""Helpers of the registry operation tests: real small models registered as candidates with
held-out figures measured as the training measures them (accuracy, both baselines, paired
differences with their standard errors)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from integrations.store import Store
from ml.records import ModelRecord


@dataclass
class TrainedSmall:
    """A tiny fitted model and the figures measured on its held-out hours."""

    model: Any
    metrics: dict[str, Any]
    feature_spec: dict[str, Any]
    model_type: str


def train_small(candles: pd.DataFrame, *, model_type: str = "gru", seed: int = 0) -> TrainedSmall:
    """Fit a tiny model for one epoch on the older 80 % of ``candles`` (seeded), and score it
    and the two baselines on the newest 20 % (never seen in fitting), as the training does:
    accuracy, baselines, paired differences with their standard errors."""
    import keras

    from ml.deploy_rule import BASELINES, Holdout, decide
    from ml.features import prepare_dataset
    from ml.metrics import baseline_probabilities, baselines, correct
    from ml.models import build_model

    keras.utils.set_random_seed(seed)
    ds = prepare_dataset(candles, lookback=12, horizon_bars=1)
    model = build_model(model_type, 12, ds.spec.n_features, units=8)
    model.fit(ds.x_train, ds.y_train, epochs=1, batch_size=128, verbose=0)
    p_up = model.predict(ds.x_val, verbose=0).reshape(-1)
    base_p = baseline_probabilities(ds.x_train, ds.y_train, ds.x_val)
    holdout = Holdout(
        cut=len(ds.y_train),
        positions=np.arange(len(ds.y_val)),
        y=ds.y_val,
        start=ds.t_val[0].to_pydatetime(),
        end=ds.t_val[-1].to_pydatetime(),
    )
    decision = decide(
        holdout,
        correct(ds.y_val, p_up),
        [(name, None, correct(ds.y_val, base_p[name])) for name in BASELINES],
    )
    metrics = {
        "val_accuracy": decision.candidate_accuracy,
        "holdout_accuracy": decision.candidate_accuracy,
        "holdout": decision.model_dump(mode="json"),
        "baselines": baselines(ds.x_train, ds.y_train, ds.x_val, ds.y_val),
        "validation_samples": len(ds.y_val),
        "validation_end": ds.t_val[-1].isoformat(),
    }
    return TrainedSmall(model, metrics, ds.spec.to_dict(), model_type)


def register_candidate(
    store: Store,
    model_dir: Path,
    key: bytes,
    trained: TrainedSmall,
    *,
    symbol: str,
    created_by: str = "test",
) -> ModelRecord:
    """Register ``trained`` as a candidate of ``symbol`` 1h. Returns the record."""
    from ml.registry import ModelRegistry

    return ModelRegistry(store, model_dir, key).register(
        trained.model,
        model_type=trained.model_type,
        symbol=symbol,
        timeframe="1h",
        metrics=trained.metrics,
        feature_spec=trained.feature_spec,
        horizon_bars=1,
        created_by=created_by,
    )
