"""Reject before queueing what cannot run: the data checks of the jobs (TC-ASYNC-008, 013, 066).

Each check reads the store only (counts first, so a large range costs one count) and
raises with the same words as the flow's own check, which stays in place for runs started
from the UI or the CLI. A rejection answers 422 and leaves no run and no quota used.
"""

from __future__ import annotations

from typing import Any

from backtest.service import MIN_BARS, check_range, range_bounds
from core.exceptions import InsufficientDataError, InvalidInputError
from core.market import bar_length
from core.schemas.analysis import PREDICTION_TIMEFRAME, no_model_message
from integrations.store import C, Store
from tasks.training import expected_samples


def _candles(symbol: str, timeframe: str, **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "timeframe": timeframe, **extra}


def training_data(params: Any, store: Store) -> None:
    """train: at least ``days_of_data`` of candles (30 days of 1h -> 720).

    Raises:
        InvalidInputError: no candle of the symbol and timeframe is stored.
        InsufficientDataError: 'Insufficient data: expected 720 samples, found 120 ...'.
    """
    expected = expected_samples(params)
    found = store.col(C.MARKET_DATA).count_documents(
        _candles(params.symbol, params.timeframe), limit=expected
    )
    if found == 0:
        raise InvalidInputError(
            f"Invalid trading symbol {params.symbol!r}: no {params.timeframe} candles stored; "
            "load market data for it first"
        )
    if found < expected:
        raise InsufficientDataError(
            f"Insufficient data: expected {expected} samples, found {found} "
            f"({params.symbol} {params.timeframe}); load more history or lower days_of_data"
        )


def prediction_data(params: Any, store: Store) -> None:
    """predict: hourly candles of the symbol and a deployed model to forecast with.

    Raises:
        InsufficientDataError: no 1h candle of the symbol is stored.
        InvalidInputError: no model of ``model_type`` is deployed for the symbol.
    """
    if not store.col(C.MARKET_DATA).count_documents(
        _candles(params.symbol, PREDICTION_TIMEFRAME), limit=1
    ):
        raise InsufficientDataError(
            f"Insufficient data: no {PREDICTION_TIMEFRAME} candles of {params.symbol} in the "
            "store; ingest them with the ingest-market-data flow"
        )
    deployed = store.col(C.MODELS).count_documents(
        {
            "symbol": params.symbol,
            "timeframe": PREDICTION_TIMEFRAME,
            "model_type": params.model_type,
            "status": "deployed",
        },
        limit=1,
    )
    if not deployed:
        raise InvalidInputError(no_model_message(params.model_type, params.symbol))


def range_data(params: Any, store: Store) -> None:
    """backtest, optimize: the range ``[start_date, end_date)`` is (nearly) covered.

    Raises:
        InsufficientDataError: the flow's message (backtest.service.check_range), naming the
            symbol, timeframe, range asked and range found.
    """
    start, end = range_bounds(params.start_date, params.end_date)
    expected = int((end - start) / bar_length(params.timeframe))
    query = _candles(params.symbol, params.timeframe, open_time={"$gte": start, "$lt": end})
    if store.col(C.MARKET_DATA).count_documents(query) >= max(MIN_BARS, 0.9 * expected):
        return
    frame = store.load_candles(params.symbol, params.timeframe, start, end)  # few bars
    check_range(frame, params.symbol, params.timeframe, start, end)
