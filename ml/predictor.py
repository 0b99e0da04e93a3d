"""A model loaded from the registry (decrypted in memory), ready to predict from candles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from core.exceptions import InsufficientDataError
from ml.features import FeatureSpec, inference_windows, make_labels
from ml.metrics import classification_metrics

#: History used before the newest window so indicator values match those seen in training.
WARMUP_BARS = 300

if TYPE_CHECKING:
    import keras

    from ml.registry import ModelRecord


@dataclass
class LoadedModel:
    """A registered model with its network in memory.

    Attributes:
        record: the registry record (type, symbol, timeframe, feature_spec, horizon_bars...).
        model: the Keras network.
    """

    record: ModelRecord
    model: keras.Model

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.record.feature_spec)

    def predict_up_probabilities(self, candles: pd.DataFrame) -> np.ndarray:
        """P(close[t + horizon_bars] > close[t]) for every bar of ``candles``.

        Args:
            candles: frame as returned by ``Store.load_candles`` (oldest first).

        Returns:
            float array aligned with ``candles``; NaN for bars without a full feature window.

        Raises:
            DataQualityError: NaN/Inf or non-positive prices in the candles.
        """
        out = np.full(len(candles), np.nan)
        windows, ends = inference_windows(candles, self.spec)
        if len(ends):
            p = self.model.predict(windows, batch_size=512, verbose=0).reshape(-1)
            out[ends] = p
        return out

    def predict_up_probability(self, candles: pd.DataFrame) -> float:
        """Probability that the forward return from the newest bar is positive.

        Raises:
            InsufficientDataError: the newest bar lacks a full feature window.
        """
        spec = self.spec
        # recursive indicators (Wilder RSI, MACD EMAs) need ~250 bars to forget their seed
        tail = candles.iloc[-(spec.lookback + WARMUP_BARS) :]
        p = self.predict_up_probabilities(tail)
        if not len(p) or not np.isfinite(p[-1]):
            raise InsufficientDataError(
                f"Insufficient data: the model needs at least {spec.lookback + 40} recent candles "
                f"({spec.lookback + WARMUP_BARS} recommended), "
                f"got {len(candles)}"
            )
        return float(p[-1])

    def evaluate(self, candles: pd.DataFrame) -> dict[str, Any]:
        """Score the model's hard labels on ``candles`` (every bar with features and a known future).

        Returns:
            accuracy, precision, recall, f1, n_samples, predicted/actual up rates, plus
            ``majority_accuracy`` (always predicting the window's own majority direction).

        Raises:
            InsufficientDataError: no bar of the window can be scored.
        """
        p = self.predict_up_probabilities(candles)
        y = make_labels(candles["close"].to_numpy(np.float64), self.spec.horizon_bars)
        ok = np.isfinite(p) & np.isfinite(y)
        if not ok.any():
            raise InsufficientDataError(
                f"Insufficient data: no bar of the {len(candles)} candles has both a full feature "
                "window and a known outcome"
            )
        metrics: dict[str, Any] = classification_metrics(y[ok], p[ok])
        up = float(y[ok].mean())
        metrics["majority_accuracy"] = max(up, 1.0 - up)
        return metrics
