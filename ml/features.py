"""Model inputs from candles, with no look-ahead.

* :func:`compute_features` turns candles into one row of features per bar; the row of bar
  ``t`` uses only candles up to and including ``t`` (trailing windows, causal indicators).
* :func:`make_labels` gives the hard target: 1 when the close ``horizon_bars`` bars later is
  above the close of bar ``t`` (the forward return is positive), else 0; NaN where the future
  is not known yet.
* :func:`prepare_dataset` builds sliding windows, splits them chronologically into train and
  validation with a gap of ``lookback + horizon_bars`` bars (so no training label overlaps a
  validation window), and fits the scaler on the training rows only.
* :class:`FeatureSpec` holds everything needed to rebuild the same inputs later (stored with
  the model in the registry).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from core.exceptions import DataQualityError, InsufficientDataError

log = logging.getLogger(__name__)

#: Features always available (plain price/volume transforms).
BASE_FEATURES: tuple[str, ...] = (
    "ret_1",
    "ret_4",
    "ret_12",
    "range_pct",
    "body_pct",
    "close_loc",
    "volume_ratio",
)
#: Indicator features, computed with :mod:`backtest.indicators` when that module exists.
INDICATOR_FEATURES: tuple[str, ...] = ("rsi_14", "macd_hist_pct", "bb_pctb")

DEFAULT_LOOKBACK = 24
DEFAULT_HORIZON_BARS = 1
_VOLUME_WINDOW = 24


@dataclass
class FeatureSpec:
    """How model inputs were built; enough to rebuild them for prediction.

    Attributes:
        lookback: bars per input window (the window ends at the bar being predicted from).
        horizon_bars: the target is the sign of the return from bar t to bar t+horizon_bars.
        feature_names: columns of :func:`compute_features`, in model input order.
        scaler_mean, scaler_scale: per-feature standardisation fitted on the training rows.
        gap_bars: bars left out between the train and validation splits.
    """

    lookback: int
    horizon_bars: int
    feature_names: list[str]
    scaler_mean: list[float] = field(default_factory=list)
    scaler_scale: list[float] = field(default_factory=list)
    gap_bars: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Return a plain dict (for MongoDB and checkpoints)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Rebuild a spec from :meth:`to_dict` output."""
        return cls(
            lookback=int(data["lookback"]),
            horizon_bars=int(data["horizon_bars"]),
            feature_names=list(data["feature_names"]),
            scaler_mean=[float(x) for x in data.get("scaler_mean", [])],
            scaler_scale=[float(x) for x in data.get("scaler_scale", [])],
            gap_bars=int(data.get("gap_bars", 0)),
        )

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def scale(self, values: np.ndarray) -> np.ndarray:
        """Standardise ``values`` (rows x features) with the fitted scaler. Returns float32."""
        mean = np.asarray(self.scaler_mean, dtype=np.float64)
        scale = np.asarray(self.scaler_scale, dtype=np.float64)
        return ((values - mean) / scale).astype(np.float32)


@dataclass
class Dataset:
    """Windows and labels split chronologically.

    ``x_*`` have shape (samples, lookback, features); ``y_*`` hold 0/1 floats;
    ``t_*`` are the bar open times each sample predicts from (window end).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    t_train: pd.DatetimeIndex
    t_val: pd.DatetimeIndex
    spec: FeatureSpec


def available_features() -> tuple[str, ...]:
    """Feature names this installation can compute (indicators need backtest.indicators)."""
    try:
        import backtest.indicators  # noqa: F401
    except ImportError:
        return BASE_FEATURES
    return BASE_FEATURES + INDICATOR_FEATURES


def compute_features(candles: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """One row of causal features per bar.

    Args:
        candles: columns ``open, high, low, close, volume`` indexed by bar open time, oldest first.
        names: features to return (default: :func:`available_features`).

    Returns:
        a float frame on the candles' index; leading rows are NaN until each trailing
        window is full.

    Raises:
        DataQualityError: NaN/Inf or non-positive prices in the candles.
    """
    names = list(names or available_features())
    check_candles(candles)
    o = candles["open"].to_numpy(np.float64)
    h = candles["high"].to_numpy(np.float64)
    lo = candles["low"].to_numpy(np.float64)
    c = candles["close"].to_numpy(np.float64)
    v = candles["volume"].to_numpy(np.float64)
    logc = np.log(c)
    out: dict[str, np.ndarray] = {}
    for k in (1, 4, 12):
        r = np.full_like(c, np.nan)
        r[k:] = logc[k:] - logc[:-k]
        out[f"ret_{k}"] = r
    out["range_pct"] = (h - lo) / c
    out["body_pct"] = (c - o) / o
    span = h - lo
    out["close_loc"] = np.where(span > 0, (c - lo) / np.where(span > 0, span, 1.0), 0.5)
    logv = np.log1p(v)
    trailing = pd.Series(logv).rolling(_VOLUME_WINDOW, min_periods=_VOLUME_WINDOW).mean()
    out["volume_ratio"] = logv - trailing.to_numpy()
    if any(n in INDICATOR_FEATURES for n in names):
        out.update(_indicator_features(candles))
    missing = [n for n in names if n not in out]
    if missing:
        raise DataQualityError(f"unknown features {missing}; available: {sorted(out)}")
    return pd.DataFrame({n: out[n] for n in names}, index=candles.index)


def _indicator_features(candles: pd.DataFrame) -> dict[str, np.ndarray]:
    """RSI, MACD histogram and Bollinger %b from :mod:`backtest.indicators` (all causal)."""
    from backtest import indicators as ind

    c = candles["close"].to_numpy(np.float64)
    rsi = np.asarray(ind.rsi(c, 14), dtype=np.float64)
    _line, _signal, hist = ind.macd(c)
    upper, _middle, lower = ind.bollinger(c)
    width = np.asarray(upper, dtype=np.float64) - np.asarray(lower, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        pctb = np.where(width > 0, (c - np.asarray(lower)) / width, 0.5)
    hist = np.asarray(hist, dtype=np.float64)
    return {"rsi_14": rsi / 100.0 - 0.5, "macd_hist_pct": hist / c, "bb_pctb": pctb}


def check_candles(candles: pd.DataFrame) -> None:
    """Reject candles a model must not learn from.

    Raises:
        DataQualityError: missing columns, NaN/Inf values or non-positive prices, naming the
            first bad bar.
    """
    cols = ["open", "high", "low", "close", "volume"]
    missing = [col for col in cols if col not in candles]
    if missing:
        raise DataQualityError(f"candles lack columns {missing}")
    values = candles[cols].to_numpy(np.float64)
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise DataQualityError(
            f"candles contain NaN/Inf (first at {candles.index[int(np.argmax(bad))]}); "
            "repair or re-import the market data before training"
        )
    nonpos = (values[:, :4] <= 0).any(axis=1)
    if nonpos.any():
        raise DataQualityError(
            f"candles contain non-positive prices (first at {candles.index[int(np.argmax(nonpos))]})"
        )


def make_labels(close: np.ndarray, horizon_bars: int) -> np.ndarray:
    """Hard direction labels of the forward return.

    Returns:
        float array: 1.0 where ``close[t + horizon_bars] > close[t]``, 0.0 where not, NaN for the
        last ``horizon_bars`` bars (future unknown).
    """
    close = np.asarray(close, dtype=np.float64)
    y = np.full(close.shape, np.nan)
    if len(close) > horizon_bars:
        y[:-horizon_bars] = (close[horizon_bars:] > close[:-horizon_bars]).astype(np.float64)
    return y


def window_ends(features: np.ndarray, lookback: int) -> np.ndarray:
    """Indices ``t`` whose window ``features[t-lookback+1 : t+1]`` is complete and finite."""
    finite = np.isfinite(features).all(axis=1).astype(np.int64)
    if len(finite) < lookback:
        return np.array([], dtype=np.int64)
    run = np.convolve(finite, np.ones(lookback, dtype=np.int64), mode="valid")
    return np.nonzero(run == lookback)[0] + lookback - 1


def make_windows(scaled: np.ndarray, ends: np.ndarray, lookback: int) -> np.ndarray:
    """Stack windows ending at ``ends``. Returns float32 (len(ends), lookback, features)."""
    if len(ends) == 0:
        return np.zeros((0, lookback, scaled.shape[1]), dtype=np.float32)
    offsets = np.arange(-lookback + 1, 1)
    return scaled[ends[:, None] + offsets[None, :]].astype(np.float32)


def min_bars(lookback: int, horizon_bars: int, min_samples: int = 64) -> int:
    """Rough number of candles needed for a usable dataset (warm-up + gap + samples)."""
    return 40 + lookback + 2 * (lookback + horizon_bars) + min_samples


def prepare_dataset(
    candles: pd.DataFrame,
    *,
    lookback: int = DEFAULT_LOOKBACK,
    horizon_bars: int = DEFAULT_HORIZON_BARS,
    validation_split: float = 0.2,
    feature_names: list[str] | None = None,
    spec: FeatureSpec | None = None,
    min_train_samples: int = 32,
    min_val_samples: int = 16,
) -> Dataset:
    """Windows, labels, a chronological split with a gap, and a scaler fitted on train only.

    Args:
        spec: reuse this spec's features and scaler instead of fitting a new one (resume and
            incremental training keep the inputs of the model they continue).

    Returns:
        a :class:`Dataset` whose ``spec`` holds the scaler.

    Raises:
        InsufficientDataError: too few complete windows for the split.
        DataQualityError: bad candles.
    """
    if spec is not None:
        lookback, horizon_bars, feature_names = spec.lookback, spec.horizon_bars, spec.feature_names
    feats = compute_features(candles, feature_names)
    names = list(feats.columns)
    values = feats.to_numpy(np.float64)
    labels = make_labels(candles["close"].to_numpy(np.float64), horizon_bars)
    ends = window_ends(values, lookback)
    ends = ends[np.isfinite(labels[ends])]
    gap = lookback + horizon_bars
    n_val = int(round(len(ends) * validation_split))
    n_train = len(ends) - n_val - gap
    if n_train < min_train_samples or n_val < min_val_samples:
        raise InsufficientDataError(
            f"Insufficient data: {len(candles)} candles give {len(ends)} complete samples; "
            f"need at least {min_train_samples} train + {gap} gap + {min_val_samples} validation "
            f"samples (lookback {lookback}, horizon {horizon_bars}, validation_split "
            f"{validation_split}): load more days of data"
        )
    train_ends, val_ends = ends[:n_train], ends[n_train + gap :]
    if spec is None:
        rows = values[train_ends[0] - lookback + 1 : train_ends[-1] + 1]
        mean = np.nanmean(rows, axis=0)
        std = np.nanstd(rows, axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        spec = FeatureSpec(
            lookback=lookback,
            horizon_bars=horizon_bars,
            feature_names=names,
            scaler_mean=[float(x) for x in mean],
            scaler_scale=[float(x) for x in std],
            gap_bars=gap,
        )
    scaled = np.nan_to_num(spec.scale(values), nan=0.0)
    index = pd.DatetimeIndex(candles.index)
    return Dataset(
        x_train=make_windows(scaled, train_ends, lookback),
        y_train=labels[train_ends].astype(np.float32),
        x_val=make_windows(scaled, val_ends, lookback),
        y_val=labels[val_ends].astype(np.float32),
        t_train=index[train_ends],
        t_val=index[val_ends],
        spec=spec,
    )


def inference_windows(candles: pd.DataFrame, spec: FeatureSpec) -> tuple[np.ndarray, np.ndarray]:
    """Windows for every bar with enough history, scaled with ``spec``.

    Returns:
        (windows of shape (k, lookback, features), their end positions in ``candles``).
    """
    feats = compute_features(candles, spec.feature_names).to_numpy(np.float64)
    ends = window_ends(feats, spec.lookback)
    scaled = np.nan_to_num(spec.scale(feats), nan=0.0)
    return make_windows(scaled, ends, spec.lookback), ends
