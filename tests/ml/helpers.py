"""Helpers of the ML tests (and of other areas' tests that need a deployed model): generated
candles with a known, learnable signal and a tiny deployed model."""

from __future__ import annotations

import numpy as np
import pandas as pd


def make_candles(
    n_bars: int,
    *,
    seed: int = 7,
    momentum: float = 0.6,
    end: str = "2026-11-01",
    freq: str = "1h",
) -> pd.DataFrame:
    """Hourly candles whose log returns follow an AR(1) with coefficient ``momentum``.

    The sign of the next return is predictable from the last one (about
    0.5 + asin(momentum)/pi = 70% for 0.6): a known signal a working pipeline must find.
    """
    rng = np.random.default_rng(seed)
    r = np.zeros(n_bars)
    eps = rng.normal(0, 0.004, n_bars)
    for i in range(1, n_bars):
        r[i] = momentum * r[i - 1] + eps[i]
    close = 30000 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[close[0]], close[:-1]])
    wiggle = np.abs(rng.normal(0, 0.002, n_bars))
    high = np.maximum(open_, close) * (1 + wiggle)
    low = np.minimum(open_, close) * (1 - wiggle)
    volume = rng.lognormal(3, 0.3, n_bars)
    idx = pd.date_range(
        end=pd.Timestamp(end, tz="UTC"), periods=n_bars, freq=freq, name="open_time"
    )
    return pd.DataFrame(
        {
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
            "quote_volume": volume * close,
            "trades_count": 100,
        },
        index=idx,
    )


def make_gated_candles(
    n_bars: int,
    *,
    seed: int = 7,
    gate: float = 0.7,
    end: str = "2026-11-01",
) -> pd.DataFrame:
    """Hourly candles with a signal logistic regression cannot see but a network can.

    After a bar with above-median volume the next return follows it (momentum, AR ``gate``);
    after a quiet bar it reverses (AR ``-gate``; a negative ``gate`` swaps the two). On
    average the returns are uncorrelated, so a linear model of the window is near chance,
    while the sign of ``return x volume`` predicts the next bar (a tiny GRU: 0.66-0.70).
    """
    rng = np.random.default_rng(seed)
    eps = rng.normal(0, 0.004, n_bars)
    volume = rng.lognormal(3, 0.3, n_bars)
    loud = np.where(volume > np.median(volume), 1.0, -1.0)
    r = np.zeros(n_bars)
    for i in range(1, n_bars):
        r[i] = gate * loud[i - 1] * r[i - 1] + eps[i]
    close = 30000 * np.exp(np.cumsum(r))
    open_ = np.concatenate([[close[0]], close[:-1]])
    wiggle = np.abs(rng.normal(0, 0.002, n_bars))
    idx = pd.date_range(end=pd.Timestamp(end), periods=n_bars, freq="1h", name="open_time")
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) * (1 + wiggle),
            "low": np.minimum(open_, close) * (1 - wiggle),
            "close": close,
            "volume": volume,
            "quote_volume": volume * close,
            "trades_count": 100,
        },
        index=idx,
    )


# ---------------------------------------------------------------- bulk-analysis / predict-price
def deploy_small_model(
    store,  # noqa: ANN001 - integrations.store.Store
    model_dir,  # noqa: ANN001 - pathlib.Path
    key: bytes,
    candles: pd.DataFrame,
    *,
    symbol: str,
    model_type: str = "gru",
    epochs: int = 2,
    seed: int | None = None,
):  # noqa: ANN201 - ml.registry.ModelRecord
    """Fit a tiny model on ``candles`` for ``epochs`` (held-out accuracy measured), register
    and deploy it for ``symbol`` 1h. ``seed``: the same network whatever ran before in the
    process (:func:`ml.models.seed_this_thread`). Returns the deployed record."""
    from ml.features import prepare_dataset
    from ml.models import build_model, seed_this_thread
    from ml.registry import ModelRegistry

    ds = prepare_dataset(candles, lookback=12, horizon_bars=1)
    if seed is not None:
        seed_this_thread(seed)
    model = build_model(model_type, 12, ds.spec.n_features, units=8, seed=seed)
    model.fit(ds.x_train, ds.y_train, epochs=epochs, batch_size=128, verbose=0)
    p = model.predict(ds.x_val, verbose=0).reshape(-1)
    val_accuracy = float(((p > 0.5) == (ds.y_val > 0.5)).mean())
    registry = ModelRegistry(store, model_dir, key)
    record = registry.register(
        model,
        model_type=model_type,
        symbol=symbol,
        timeframe="1h",
        metrics={"val_accuracy": val_accuracy},
        feature_spec=ds.spec.to_dict(),
        horizon_bars=1,
        created_by="test",
    )
    return registry.deploy(record.model_id, by="test")
