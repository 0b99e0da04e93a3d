"""A model loaded from the registry (decrypted in memory), ready to predict from candles.

Inference of many models of one architecture (bulk-analysis: one deployed model per
symbol) goes through :class:`SharedForward`: on the JAX backend the forward pass is
compiled once per architecture and called with each model's weights (measured: the first
``predict`` of a freshly loaded small GRU costs ~0.2 s of tracing and compiling, a call of
the shared compiled pass 0.3 ms).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
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

    from ml.records import ModelRecord


class SharedForward:
    """One compiled forward pass per network architecture, shared by every model of it.

    Models are grouped by their Keras config and variable shapes: identical architectures
    differ only in weights, which are passed as arguments of one ``jax.jit``-compiled
    ``stateless_call``. On another Keras backend it falls back to ``model.predict``.
    Holds references to one model per architecture: make one per batch of work, not per
    process.
    """

    def __init__(self) -> None:
        self._passes: dict[str, Callable[..., Any]] = {}

    @staticmethod
    def _key(model: keras.Model, x: np.ndarray) -> str:
        """The architecture: the model's config with its own and its layers' names replaced
        by their positions (names differ between otherwise identical models, wiring does
        not), the variables' shapes and the input's shape and dtype."""
        names = {layer.name: f"#{i}" for i, layer in enumerate(model.layers)}
        names[model.name] = "#model"

        def anonymous(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: anonymous(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [anonymous(v) for v in value]
            return names.get(value, value) if isinstance(value, str) else value

        shapes = [list(v.shape) for v in model.variables]
        return json.dumps(
            [anonymous(model.get_config()), shapes, list(x.shape[1:]), str(x.dtype)],
            sort_keys=True,
            default=str,
        )

    def __call__(self, model: keras.Model, x: np.ndarray) -> np.ndarray:
        """``model``'s output for the batch ``x``, as a float numpy array."""
        import keras

        if keras.backend.backend() != "jax":
            return np.asarray(model.predict(x, batch_size=512, verbose=0))
        key = self._key(model, x)
        fwd = self._passes.get(key)
        if fwd is None:
            import jax

            template = model

            def forward(trainable: list[Any], non_trainable: list[Any], batch: Any) -> Any:
                out, _ = template.stateless_call(trainable, non_trainable, batch, training=False)
                return out

            fwd = self._passes[key] = jax.jit(forward)
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        return np.asarray(fwd(trainable, non_trainable, x))


@dataclass
class LoadedModel:
    """A registered model with its network in memory.

    Attributes:
        record: the registry record (type, symbol, timeframe, feature_spec, horizon_bars...).
        model: the Keras network.
        forward: the shared compiled forward pass to use (None: ``model.predict``).
    """

    record: ModelRecord
    model: keras.Model
    forward: SharedForward | None = field(default=None, repr=False)

    def _predict(self, windows: np.ndarray) -> np.ndarray:
        if self.forward is not None:
            return self.forward(self.model, windows).reshape(-1)
        return self.model.predict(windows, batch_size=512, verbose=0).reshape(-1)

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
            out[ends] = self._predict(windows)
        return out

    def _newest_window(self, candles: pd.DataFrame) -> np.ndarray:
        """The feature window of the newest bar (shape ``(1, lookback, n_features)``), its
        indicators computed over the last ``lookback + WARMUP_BARS`` bars.

        Raises:
            InsufficientDataError: the newest bar lacks a full feature window.
        """
        spec = self.spec
        # recursive indicators (Wilder RSI, MACD EMAs) need ~250 bars to forget their seed
        tail = candles.iloc[-(spec.lookback + WARMUP_BARS) :]
        windows, ends = inference_windows(tail, spec)
        if not len(ends) or ends[-1] != len(tail) - 1:
            raise InsufficientDataError(
                f"Insufficient data: the model needs at least {spec.lookback + 40} recent candles "
                f"({spec.lookback + WARMUP_BARS} recommended), "
                f"got {len(candles)}"
            )
        return windows[-1:]

    def _finite(self, p: float) -> float:
        if not np.isfinite(p):
            raise InsufficientDataError(
                f"model {self.record.model_id} gave no probability ({p}) for the newest "
                "bar: its weights are not finite; retrain it"
            )
        return float(p)

    def predict_up_probability(self, candles: pd.DataFrame) -> float:
        """Probability that the forward return from the newest bar is positive.

        Raises:
            InsufficientDataError: the newest bar lacks a full feature window, or the model
                gave a non-finite probability.
        """
        return self._finite(self._predict(self._newest_window(candles))[-1])

    def predict_newest_and_history(
        self, candles: pd.DataFrame, history_from: int
    ) -> tuple[float, np.ndarray]:
        """:meth:`predict_up_probability` and :meth:`predict_up_probabilities` of
        ``candles.iloc[history_from:]`` in one forward pass (the same windows, so the same
        values; one compiled batch instead of two or three in a fresh process).

        Returns:
            (P(up) of the newest bar, probabilities aligned with ``candles.iloc[history_from:]``).

        Raises:
            InsufficientDataError: as :meth:`predict_up_probability`.
        """
        newest = self._newest_window(candles)
        history = candles.iloc[history_from:]
        windows, ends = inference_windows(history, self.spec)
        p = self._predict(np.concatenate([windows, newest]) if len(ends) else newest)
        out = np.full(len(history), np.nan)
        if len(ends):
            out[ends] = p[: len(ends)]
        return self._finite(p[-1]), out

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
