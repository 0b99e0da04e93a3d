"""Data-quality checks run on every candle load, before anything is stored.

Bad rows are rejected and reported (counts per reason, the first few examples); good rows
are kept. Gaps (missing bars) are reported, not filled: nothing here invents a price.
"""

from __future__ import annotations

import logging
from datetime import UTC

import numpy as np
import pandas as pd

from core.market import bar_length
from core.schemas.market_data import Gap, QualityReport, RejectedRow

log = logging.getLogger(__name__)

PRICE_COLUMNS = ("open", "high", "low", "close")
REQUIRED_COLUMNS = (*PRICE_COLUMNS, "volume")
MAX_EXAMPLES_PER_REASON = 3
MAX_GAP_EXAMPLES = 5


def _example(reason: str, t: object, row: pd.Series) -> RejectedRow:
    values = {}
    for k, v in row.items():
        if isinstance(v, float | np.floating):
            values[str(k)] = None if np.isnan(v) else (str(v) if np.isinf(v) else float(v))
        elif isinstance(v, int | np.integer):
            values[str(k)] = int(v)
        else:
            values[str(k)] = None if v is None else str(v)
    when = None if pd.isna(t) else pd.Timestamp(t).to_pydatetime()
    return RejectedRow(reason=reason, open_time=when, values=values)  # type: ignore[arg-type]


def check_candles(frame: pd.DataFrame, timeframe: str) -> tuple[pd.DataFrame, QualityReport]:
    """Check candles and split good rows from bad.

    Checks, in order (a row is counted under its first failing reason): timestamp missing
    or not on the timeframe's grid (``bad_timestamp``), NaN/Inf in OHLCV (``nan_or_inf``),
    a price <= 0 (``non_positive_price``), high < low (``high_below_low``), open or close
    outside [low, high] (``open_close_outside_range``), volume < 0 (``negative_volume``),
    then a repeated bar time (``duplicate_bar``: the first occurrence is kept).

    Args:
        frame: columns ``open, high, low, close, volume`` (extra columns kept), indexed by
            bar open time (naive times are taken as UTC).
        timeframe: one of ``core.market.TIMEFRAMES``; defines the grid and the gaps.

    Returns:
        (clean frame sorted by time with a UTC ``DatetimeIndex`` named ``open_time``,
        :class:`QualityReport`).

    Raises:
        InvalidInputError: unknown timeframe.
        KeyError: a required column is missing.
    """
    step = bar_length(timeframe)
    missing_cols = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise KeyError(f"candle frame lacks columns {missing_cols}")
    rows_in = len(frame)
    idx = pd.DatetimeIndex(pd.to_datetime(frame.index, utc=True, errors="coerce")).as_unit("ns")
    work = frame.copy()
    work.index = idx
    prices = work[list(PRICE_COLUMNS)].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    volume = pd.to_numeric(work["volume"], errors="coerce").to_numpy(float)
    ohlcv = np.column_stack([prices, volume])
    for c, col in zip(REQUIRED_COLUMNS, ohlcv.T, strict=True):
        work[c] = col

    step_ns = int(step.total_seconds() * 1e9)
    ns = idx.asi8
    checks: list[tuple[str, np.ndarray]] = [
        ("bad_timestamp", idx.isna() | (ns % step_ns != 0)),
        ("nan_or_inf", ~np.isfinite(ohlcv).all(axis=1)),
    ]
    with np.errstate(invalid="ignore"):
        o, h, lo, c = prices.T
        checks += [
            ("non_positive_price", (prices <= 0).any(axis=1)),
            ("high_below_low", h < lo),
            ("open_close_outside_range", (o > h) | (o < lo) | (c > h) | (c < lo)),
            ("negative_volume", volume < 0),
        ]

    reason = np.full(rows_in, "", dtype=object)
    for name, mask in checks:
        reason[(reason == "") & mask] = name
    ok = reason == ""
    # duplicates among the otherwise good rows: keep the first occurrence of each bar time
    dup = np.zeros(rows_in, dtype=bool)
    dup[ok] = pd.Index(idx[ok]).duplicated(keep="first")
    reason[dup] = "duplicate_bar"
    ok &= ~dup

    rejected: dict[str, int] = {}
    examples: list[RejectedRow] = []
    for name, _ in [*checks, ("duplicate_bar", dup)]:
        positions = np.flatnonzero(reason == name)
        if len(positions):
            rejected[name] = int(len(positions))
            for p in positions[:MAX_EXAMPLES_PER_REASON]:
                examples.append(_example(name, idx[p], frame.iloc[p]))

    clean = work[ok].sort_index()
    clean.index.name = "open_time"
    gaps, missing, gap_examples = _gaps(clean.index, step)
    report = QualityReport(
        rows_in=rows_in,
        rows_kept=len(clean),
        rejected=rejected,
        examples=examples,
        duplicates=rejected.get("duplicate_bar", 0),
        gaps=gaps,
        missing_bars=missing,
        gap_examples=gap_examples,
        first=clean.index[0].to_pydatetime() if len(clean) else None,
        last=clean.index[-1].to_pydatetime() if len(clean) else None,
    )
    if rejected:
        log.warning("quality: %d of %d rows rejected %s", sum(rejected.values()), rows_in, rejected)
    return clean, report


def _gaps(index: pd.DatetimeIndex, step: pd.Timedelta) -> tuple[int, int, list[Gap]]:
    if len(index) < 2:
        return 0, 0, []
    diffs = np.diff(index.as_unit("ns").asi8)
    step_ns = int(pd.Timedelta(step).value)
    where = np.flatnonzero(diffs > step_ns)
    missing = (diffs[where] // step_ns - 1).astype(int)
    examples = [
        Gap(
            after=index[i].to_pydatetime().astimezone(UTC),
            before=index[i + 1].to_pydatetime().astimezone(UTC),
            missing_bars=int(m),
        )
        for i, m in zip(where[:MAX_GAP_EXAMPLES], missing[:MAX_GAP_EXAMPLES], strict=True)
    ]
    return int(len(where)), int(missing.sum()), examples
