"""Resampling of candles from a finer timeframe to 4h or 1d, aligned on UTC midnight."""

from __future__ import annotations

import logging

import pandas as pd

from core.exceptions import InvalidInputError
from core.market import bar_length

log = logging.getLogger(__name__)

_AGG = {
    "open": "first",
    "high": "max",
    "low": "min",
    "close": "last",
    "volume": "sum",
    "quote_volume": "sum",
    "trades_count": "sum",
}


def resample_candles(frame: pd.DataFrame, source_tf: str, target_tf: str) -> pd.DataFrame:
    """Aggregate ``frame`` (bars of ``source_tf``) into bars of ``target_tf``.

    Buckets start at UTC midnight and every ``target_tf`` after it (4h: 00:00, 04:00, ...).
    Open is the first bar's open, high the max, low the min, close the last bar's close,
    volumes and trade counts the sum. A bucket missing some of its source bars at the start
    or end of the data (an incomplete leading or trailing bucket) is dropped; a bucket with
    a gap inside the data keeps the bars it has.

    Args:
        frame: quality-checked candles with a UTC ``DatetimeIndex`` of bar open times.

    Returns:
        the resampled candles (same columns among ``open..trades_count`` that ``frame`` has),
        indexed by bucket open time, named ``open_time``.

    Raises:
        InvalidInputError: ``target_tf`` is not a whole multiple of ``source_tf``.
    """
    src, dst = bar_length(source_tf), bar_length(target_tf)
    if dst <= src or dst % src:
        raise InvalidInputError(
            f"cannot resample {source_tf} to {target_tf}: the target must be a coarser multiple"
        )
    cols = {k: v for k, v in _AGG.items() if k in frame.columns}
    if frame.empty:
        return frame[list(cols)].copy()
    per_bucket = dst // src
    grouped = frame[list(cols)].resample(dst, origin="epoch", label="left", closed="left")
    out = grouped.agg(cols)
    counts = grouped["close"].count()
    out = out[counts > 0]
    counts = counts[counts > 0]
    complete = counts == per_bucket
    # drop incomplete buckets at either edge of the data only
    keep = complete.copy()
    if len(keep):
        first_ok = int(complete.to_numpy().argmax()) if complete.any() else len(keep)
        last_ok = len(keep) - 1 - int(complete.to_numpy()[::-1].argmax()) if complete.any() else -1
        keep[:] = False
        keep.iloc[first_ok : last_ok + 1] = True
    dropped = int((~keep).sum())
    if dropped:
        log.info(
            "resample %s->%s: dropped %d incomplete edge bucket(s)", source_tf, target_tf, dropped
        )
    out = out[keep.to_numpy()]
    if "trades_count" in out:
        out["trades_count"] = out["trades_count"].astype("int64")
    out.index.name = "open_time"
    return out
