"""A trained model's signals backtested over any range (``backtest-strategy`` with
``strategy_name="model"``): which model (the deployed one of a key, or a version id), its
P(up) on every bar of the range (indicators warmed up on the bars before it), long/flat
signals through our own engine, and whether the range is in-sample for the model.

In-sample: the model saw bars from its first training bar (``metrics.train_start``) to the
end of its held-out slice (``metrics.holdout_end``, on which the deploy rule selected it)
plus the horizon its last label looked ahead. A range overlapping that span is labelled
``in_sample: true``: figures there are optimistic. A model whose record lacks those dates
(registered before they were recorded) is taken to have seen everything before it was
created.

Pure layer (no Prefect).
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from backtest.engine import check_candles, run_backtest
from backtest.metrics import compute_metrics, equity_curve, trade_list
from backtest.strategies import Candles
from core.exceptions import InsufficientDataError, InvalidInputError, NotFoundError
from core.market import bar_length
from core.schemas.backtest import BacktestConfig, BacktestResult
from core.schemas.model_backtest import MODEL_STRATEGY, ModelBacktestInfo, ModelSignalParams
from ml.economics import long_flat_signals
from ml.predictor import WARMUP_BARS

if TYPE_CHECKING:
    from ml.predictor import LoadedModel
    from ml.records import ModelRecord
    from ml.registry import ModelRegistry


def resolve_model(
    registry: ModelRegistry, params: ModelSignalParams, symbol: str, timeframe: str
) -> ModelRecord:
    """The record to backtest: ``params.model_id``, or the deployed ``params.model_type``
    model of ``symbol``/``timeframe``.

    Raises:
        InvalidInputError: no such deployed model, unknown id, or a model of another timeframe
            (each message names the parameter and the fix).
    """
    if params.model_id is not None:
        try:
            record = registry.get(params.model_id)
        except NotFoundError:
            raise InvalidInputError(
                f"parameters.model_id: no model {params.model_id!r} in the registry; use a "
                "version id the registry lists, or parameters.model_type for the deployed model"
            ) from None
    else:
        found = registry.deployed(symbol, timeframe, params.model_type)
        if found is None:
            raise InvalidInputError(
                f"parameters.model_type: no deployed {params.model_type} model for {symbol} "
                f"{timeframe}; train one with train-model, or pass parameters.model_id to "
                "backtest a candidate"
            )
        record = found
    if record.timeframe != timeframe:
        raise InvalidInputError(
            f"timeframe: model {record.model_id} predicts {record.timeframe} bars, the backtest "
            f"asks for {timeframe}; set timeframe to {record.timeframe}"
        )
    return record


def warmup_bars(record: ModelRecord) -> int:
    """Bars of history the model needs before the range's first bar (window + indicators)."""
    return int(record.feature_spec.get("lookback", 24)) + WARMUP_BARS


def _parse(value: object) -> datetime | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)  # type: ignore[arg-type]
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts).to_pydatetime()


def seen_span(record: ModelRecord) -> tuple[datetime | None, datetime]:
    """First and last bar the model was trained or selected on (see the module notes).

    Returns:
        ``(seen_start or None when not recorded, seen_end)``.
    """
    m = record.metrics or {}
    holdout = m.get("holdout") or {}
    end = _parse(m.get("holdout_end") or holdout.get("holdout_end"))
    if end is None:
        created = _parse(record.created_at)
        assert created is not None
        return _parse(m.get("train_start")), created
    end += bar_length(record.timeframe) * max(1, int(record.horizon_bars))
    return _parse(m.get("train_start")), end


def sample_label(
    record: ModelRecord, symbol: str, first: datetime, last: datetime, threshold: float
) -> ModelBacktestInfo:
    """Whether ``[first, last]`` (open times of the range's bars) is in-sample for the model.

    Returns:
        the :class:`ModelBacktestInfo` with ``in_sample`` and a note in words.
    """
    seen_start, seen_end = seen_span(record)
    overlaps = first <= seen_end and (seen_start is None or last >= seen_start)
    in_sample = overlaps and record.symbol == symbol
    span = f"{seen_start:%Y-%m-%d %H:%M}" if seen_start else "the start of its data"
    seen = f"{span} .. {seen_end:%Y-%m-%d %H:%M} UTC"
    if record.symbol != symbol:
        note = f"out-of-sample: the model was trained on {record.symbol}, not {symbol}"
    elif in_sample:
        note = (
            f"IN-SAMPLE: the range overlaps the bars the model was trained or selected on "
            f"({seen}); its figures here are optimistic"
        )
    else:
        note = f"out-of-sample: the model never saw these bars (it saw {seen})"
    return ModelBacktestInfo(
        model_id=record.model_id,
        model_type=record.model_type,
        version=record.version,
        status=record.status,
        threshold=threshold,
        seen_start=seen_start,
        seen_end=seen_end,
        in_sample=in_sample,
        note=note,
    )


def backtest_model(
    loaded: LoadedModel,
    candles: pd.DataFrame,
    start: datetime,
    params: ModelSignalParams,
    config: BacktestConfig | None = None,
    *,
    symbol: str,
    timeframe: str,
) -> BacktestResult:
    """Trade ``loaded``'s signals on the bars of ``candles`` from ``start`` on.

    Args:
        candles: the range's bars preceded by up to :func:`warmup_bars` bars of history.
        start: open time of the range's first bar (earlier bars are history only).

    Returns:
        the :class:`BacktestResult` (strategy "model"), ``in_sample`` and ``model`` set.

    Raises:
        InsufficientDataError: no bar of the range has a full feature window.
        DataQualityError: bad candles.
    """
    config = config or BacktestConfig()
    p_all = loaded.predict_up_probabilities(candles)
    in_range = np.asarray(candles.index >= start)
    frame = candles[in_range]
    p = p_all[in_range]
    if not np.isfinite(p).any():
        raise InsufficientDataError(
            f"Insufficient data: no bar from {start:%Y-%m-%d} has the {loaded.spec.lookback} "
            "bars of history the model needs; choose a later start_date or import earlier candles"
        )
    bars = Candles.from_frame(frame)
    check_candles(bars)
    run = run_backtest(bars, *long_flat_signals(p, params.threshold), config, checked=True)
    first, last = frame.index[0].to_pydatetime(), frame.index[-1].to_pydatetime()
    info = sample_label(loaded.record, symbol, first, last, params.threshold)
    return BacktestResult(
        strategy_name=MODEL_STRATEGY,
        symbol=symbol,
        timeframe=timeframe,
        start=first,
        end=last,
        bars=len(bars),
        parameters={
            "model_id": info.model_id,
            "model_type": info.model_type,
            "version": info.version,
            "threshold": params.threshold,
        },
        config=config,
        metrics=compute_metrics(run),
        trades=trade_list(run),
        equity_curve=equity_curve(run),
        in_sample=info.in_sample,
        model=info,
    )
