"""Candles from CSV files: the CryptoDataDownload format and a plain OHLCV CSV.

CryptoDataDownload (``../shared/data/*.csv``): a banner line, then the header
``date,symbol,open,high,low,close,volume_btc,volume``, newest row first; hourly dates look
like ``2019-10-17 09-AM`` (``%Y-%m-%d %I-%p``), daily ones ``2019-10-17``; times are UTC.
``volume_btc`` is the base-asset volume (our ``volume``), ``volume`` the quote volume
(our ``quote_volume``).

Plain OHLCV: a header with ``timestamp`` (or ``open_time``/``date``/``time``), ``open``,
``high``, ``low``, ``close``, ``volume`` (optional ``quote_volume``, ``trades_count``);
timestamps ISO-8601 or epoch seconds/milliseconds.

Values that cannot be parsed become NaN/NaT so the quality checks reject and report the row.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.exceptions import InvalidInputError, NotFoundError
from core.paths import check_data_path

log = logging.getLogger(__name__)

CDD_HEADER = ("date", "symbol", "open", "high", "low", "close")
TIME_COLUMNS = ("timestamp", "open_time", "date", "time", "datetime")


@dataclass(frozen=True)
class CsvCandles:
    """Candles read from one CSV file.

    Attributes:
        frame: ``open, high, low, close, volume, quote_volume`` (+ ``trades_count`` when
            present) indexed by bar open time (UTC; NaT where unparseable), file order.
        symbol: the file's symbol column (CryptoDataDownload), else None.
        timeframe: timeframe inferred from the date format or spacing, else None.
        format: ``cryptodatadownload`` or ``ohlcv``.
        source: the ``source`` tag for the store, ``csv:<file name>``.
    """

    frame: pd.DataFrame
    symbol: str | None
    timeframe: str | None
    format: str
    source: str


def read_candles_csv(path: str | Path, *, allowed_dirs: Sequence[Path] | None = None) -> CsvCandles:
    """Read a CryptoDataDownload or plain OHLCV CSV file.

    Args:
        allowed_dirs: when given, the file must lie inside one of these folders once resolved
            (``..`` collapsed, symbolic links followed); checked before it is opened.

    Returns:
        :class:`CsvCandles` (not yet quality-checked).

    Raises:
        NotFoundError: the file does not exist.
        InvalidInputError: the file is in neither format (the message lists the expected
            columns), or it lies outside ``allowed_dirs``.
    """
    path = Path(path) if allowed_dirs is None else check_data_path(path, allowed_dirs, "csv_path")
    if not path.is_file():
        raise NotFoundError(f"CSV file not found: {path}")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    lines = text.splitlines()
    header_at = next(
        (i for i, line in enumerate(lines[:5]) if _looks_like_header(line)),
        None,
    )
    if header_at is None:
        raise InvalidInputError(
            f"{path.name}: no header found; expected CryptoDataDownload columns "
            f"'date,symbol,open,high,low,close,volume_btc,volume' or plain "
            f"'timestamp,open,high,low,close,volume'"
        )
    raw = pd.read_csv(io.StringIO("\n".join(lines[header_at:])), dtype=str, keep_default_na=False)
    raw.columns = [c.strip().lower() for c in raw.columns]
    source = f"csv:{path.name}"
    if set(CDD_HEADER) <= set(raw.columns):
        return _from_cdd(raw, source)
    return _from_ohlcv(raw, source, path.name)


def _looks_like_header(line: str) -> bool:
    cols = {c.strip().lower() for c in line.split(",")}
    return {"open", "high", "low", "close"} <= cols


def _numeric(raw: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(raw[col].str.strip(), errors="coerce").to_numpy(float)


def _from_cdd(raw: pd.DataFrame, source: str) -> CsvCandles:
    dates = raw["date"].str.strip()
    hourly = dates.str.contains(r"\d{1,2}-(?:AM|PM)$", case=False, regex=True)
    timeframe = "1h" if hourly.mean() > 0.5 else "1d"
    fmt = "%Y-%m-%d %I-%p" if timeframe == "1h" else "%Y-%m-%d"
    times = pd.to_datetime(dates, format=fmt, errors="coerce", utc=True)
    base_col = next((c for c in raw.columns if c.startswith("volume_") and c != "volume"), None)
    frame = pd.DataFrame(
        {
            "open": _numeric(raw, "open"),
            "high": _numeric(raw, "high"),
            "low": _numeric(raw, "low"),
            "close": _numeric(raw, "close"),
            "volume": _numeric(raw, base_col) if base_col else np.nan,
            "quote_volume": _numeric(raw, "volume") if base_col else np.nan,
        },
        index=pd.DatetimeIndex(times, name="open_time"),
    )
    symbols = raw["symbol"].str.strip().str.replace("/", "", regex=False).str.upper()
    symbol = symbols.mode().iloc[0] if len(symbols) else None
    return CsvCandles(frame, symbol or None, timeframe, "cryptodatadownload", source)


def _parse_times(col: pd.Series) -> pd.DatetimeIndex:
    values = col.str.strip()
    as_num = pd.to_numeric(values, errors="coerce")
    if as_num.notna().mean() > 0.5:
        unit = "ms" if as_num.dropna().abs().median() > 1e11 else "s"
        return pd.DatetimeIndex(pd.to_datetime(as_num, unit=unit, utc=True, errors="coerce"))
    return pd.DatetimeIndex(pd.to_datetime(values, utc=True, errors="coerce", format="ISO8601"))


def _from_ohlcv(raw: pd.DataFrame, source: str, name: str) -> CsvCandles:
    time_col = next((c for c in TIME_COLUMNS if c in raw.columns), None)
    needed = ["open", "high", "low", "close", "volume"]
    missing = [c for c in needed if c not in raw.columns]
    if time_col is None or missing:
        raise InvalidInputError(
            f"{name}: plain OHLCV CSV needs columns timestamp,open,high,low,close,volume "
            f"(missing: {', '.join(missing + ([] if time_col else ['timestamp']))})"
        )
    times = _parse_times(raw[time_col])
    frame = pd.DataFrame(
        {c: _numeric(raw, c) for c in needed}, index=pd.DatetimeIndex(times, name="open_time")
    )
    if "quote_volume" in raw.columns:
        frame["quote_volume"] = _numeric(raw, "quote_volume")
    if "trades_count" in raw.columns:
        frame["trades_count"] = np.nan_to_num(_numeric(raw, "trades_count")).astype(np.int64)
    symbol = None
    if "symbol" in raw.columns and len(raw):
        symbol = raw["symbol"].str.strip().str.upper().mode().iloc[0] or None
    timeframe = _infer_timeframe(frame.index)
    return CsvCandles(frame, symbol, timeframe, "ohlcv", source)


def _infer_timeframe(index: pd.DatetimeIndex) -> str | None:
    from core.market import TIMEFRAMES

    valid = index.dropna().sort_values()
    if len(valid) < 2:
        return None
    step = pd.Series(np.diff(valid.as_unit("ns").asi8)).mode()
    if step.empty:
        return None
    for name, length in TIMEFRAMES.items():
        if int(step.iloc[0]) == int(pd.Timedelta(length).value):
            return name
    return None
