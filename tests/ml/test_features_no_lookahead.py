"""Features and labels: no look-ahead, chronological split with a gap, train-only scaler."""

from __future__ import annotations

import numpy as np
import pytest

from core.exceptions import DataQualityError
from ml.features import compute_features, make_labels, prepare_dataset


@pytest.mark.tc("TC-ASYNC-001")
def test_feature_at_t_ignores_every_later_candle(signal_candles):
    t = 600
    base = compute_features(signal_candles)
    altered = signal_candles.copy()
    rng = np.random.default_rng(1)
    for col in ("open", "high", "low", "close", "volume"):
        altered.iloc[t + 1 :, altered.columns.get_loc(col)] *= rng.uniform(
            0.5, 2.0, len(altered) - t - 1
        )
    after = compute_features(altered)
    assert list(base.columns) == list(after.columns) and len(base.columns) >= 8
    np.testing.assert_array_equal(base.iloc[: t + 1].to_numpy(), after.iloc[: t + 1].to_numpy())
    assert not np.allclose(
        base.iloc[t + 1 :].to_numpy(), after.iloc[t + 1 :].to_numpy(), equal_nan=True
    )


@pytest.mark.tc("TC-ASYNC-001")
def test_labels_are_forward_direction_and_unknown_at_the_end():
    close = np.array([1.0, 2.0, 1.5, 1.5, 3.0])
    y = make_labels(close, 2)
    np.testing.assert_array_equal(y[:3], [1.0, 0.0, 1.0])
    assert np.isnan(y[3:]).all()


@pytest.mark.tc("TC-ASYNC-025")
def test_split_is_chronological_with_gap_and_scaler_from_train_only(signal_candles):
    ds = prepare_dataset(signal_candles, lookback=12, horizon_bars=3, validation_split=0.25)
    step = signal_candles.index[1] - signal_candles.index[0]
    assert ds.t_train.max() < ds.t_val.min()
    assert (ds.t_val.min() - ds.t_train.max()) / step > ds.spec.gap_bars == 15
    # changing only the validation period must not change the scaler
    altered = signal_candles.copy()
    altered.loc[ds.t_val.min() :, "volume"] *= 50
    ds2 = prepare_dataset(altered, lookback=12, horizon_bars=3, validation_split=0.25)
    assert ds2.spec.scaler_mean == ds.spec.scaler_mean
    assert ds.x_train.shape[1:] == (12, ds.spec.n_features)


@pytest.mark.tc("TC-ASYNC-027")
def test_corrupt_candles_are_rejected(signal_candles):
    bad = signal_candles.copy()
    bad.iloc[500, bad.columns.get_loc("close")] = np.inf
    with pytest.raises(DataQualityError, match="NaN/Inf"):
        prepare_dataset(bad)
    bad.iloc[500, bad.columns.get_loc("close")] = -1.0
    with pytest.raises(DataQualityError, match="non-positive"):
        compute_features(bad)
