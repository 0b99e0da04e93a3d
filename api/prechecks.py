"""Reject before queueing what cannot run: the data checks of the jobs (TC-ASYNC-008, 013, 066).

Each check reads the store only, through :class:`integrations.store.coverage.CandleCoverage`:
first what the series' tail proves (one indexed read, kept up to date by the candle
writer), then, only when that is not enough, the candles' open times by an indexed read
that stops at the number needed (never a count: on nx-27017 a count scans the whole
collection). A check raises with the same words as the flow's own check, which stays in
place for runs started from the UI or the CLI. A rejection answers 422 and leaves no run
and no quota used.
"""

from __future__ import annotations

import math
from typing import Any

from backtest.service import MIN_BARS, check_range, range_bounds
from core.exceptions import InsufficientDataError, InvalidInputError, NotFoundError
from core.market import bar_length
from core.schemas.analysis import PREDICTION_TIMEFRAME, no_model_message
from integrations.store import Store
from ml.registry_views import newest_servable, serving_version
from tasks.training import expected_samples


def training_data(params: Any, store: Store) -> None:
    """train: at least ``days_of_data`` of candles (30 days of 1h -> 720).

    Raises:
        InvalidInputError: no candle of the symbol and timeframe is stored.
        InsufficientDataError: 'Insufficient data: expected 720 samples, found 120 ...'.
    """
    expected = expected_samples(params)
    facts = store.coverage.series_facts(params.symbol, params.timeframe)
    if facts is not None and facts.bars >= expected:
        return
    found = store.coverage.bars_at_least(params.symbol, params.timeframe, expected)
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
    """predict: hourly candles of the symbol and a model to forecast with: the version
    ``model_version`` names, else the deployed one.

    Raises:
        InsufficientDataError: no 1h candle of the symbol is stored.
        InvalidInputError: no model of ``model_type`` is deployed for the symbol (the message
            names the newest candidate to promote or pass), or the version asked for cannot
            serve (see :func:`serving_model_version`).
    """
    facts = store.coverage.series_facts(params.symbol, PREDICTION_TIMEFRAME)
    if (facts is None or facts.bars < 1) and not store.coverage.bars_at_least(
        params.symbol, PREDICTION_TIMEFRAME, 1
    ):
        raise InsufficientDataError(
            f"Insufficient data: no {PREDICTION_TIMEFRAME} candles of {params.symbol} in the "
            "store; ingest them with the ingest-market-data flow"
        )
    version = getattr(params, "model_version", None)  # callers built before it existed
    if version is not None:
        serving_model_version(
            store, version, [params.symbol], PREDICTION_TIMEFRAME, params.model_type
        )
    elif not store.coverage.has_deployed_model(
        params.model_type, params.symbol, PREDICTION_TIMEFRAME
    ):
        newest = newest_servable(store, params.model_type, params.symbol, PREDICTION_TIMEFRAME)
        raise InvalidInputError(no_model_message(params.model_type, params.symbol, newest))


def bulk_model_version(params: Any, store: Store) -> None:
    """bulk-analysis: the version ``model_version`` names serves one of the symbols, of the
    timeframe (nothing to check without it).

    Raises:
        InvalidInputError: see :func:`serving_model_version`.
    """
    if params.model_version is not None:
        serving_model_version(store, params.model_version, params.symbols, params.timeframe)


def serving_model_version(
    store: Store, version: str, symbols: list[str], timeframe: str, model_type: str | None = None
) -> None:
    """The flows' own check of an explicit ``model_version`` (``ml.registry_views``).

    Raises:
        InvalidInputError: no such version, an archived one, or one of another symbol,
            timeframe or model type (the message says what to pass).
    """
    try:
        serving_version(store, version, symbols=symbols, timeframe=timeframe, model_type=model_type)
    except NotFoundError as e:
        raise InvalidInputError(str(e)) from None


def range_data(params: Any, store: Store) -> None:
    """backtest, optimize: the range ``[start_date, end_date)`` is (nearly) covered.

    Raises:
        InsufficientDataError: the flow's message (backtest.service.check_range), naming the
            symbol, timeframe, range asked and range found.
    """
    start, end = range_bounds(params.start_date, params.end_date)
    expected = int((end - start) / bar_length(params.timeframe))
    needed = max(MIN_BARS, math.ceil(0.9 * expected))
    facts = store.coverage.series_facts(params.symbol, params.timeframe)
    in_tail = facts.bars_between(start, end) if facts is not None else None
    if in_tail is not None and in_tail >= needed:
        return
    found = store.coverage.bars_at_least(params.symbol, params.timeframe, needed, start, end)
    if found >= needed:
        return
    if found <= MIN_BARS:  # few bars: the flow's own check
        frame = store.load_candles(params.symbol, params.timeframe, start, end)
        check_range(frame, params.symbol, params.timeframe, start, end)
    # a too-wide range over many bars (loading them all outlasted the store timeout): the
    # flow's words from the count and the first and last bar
    first, last = store.coverage.open_time_span(params.symbol, params.timeframe, start, end)
    raise InsufficientDataError(
        f"Insufficient data for {params.symbol} {params.timeframe} from {start:%Y-%m-%d} to "
        f"{end:%Y-%m-%d}: expected {expected} bars, found {found} bars from "
        f"{first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}. Import the missing candles or "
        "choose a range inside the stored one"
    )
