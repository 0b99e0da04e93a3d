"""Charts of predictions (pure: matplotlib on Agg, no Prefect), drawn with the backtest
chart's helpers (:mod:`backtest.charts`).

* :func:`fan_chart_png`: a predict-price forecast: the recent closes, the predicted path and
  its 80 % band, hour by hour.
* :func:`live_chart_png`: a model's live record from the ledger: the daily hit rate of its
  direction predictions (with +-1 standard error) against the majority direction of the
  same outcomes, and the daily share of realised prices inside the 80 % interval against
  the 0.75-0.85 band the decay rule accepts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from backtest.charts import date_axis, new_figure, to_png
from core.schemas.analysis import PredictPriceResult
from ml.scoring import clustered_mean


def fan_chart_png(result: PredictPriceResult, recent_close: pd.Series) -> bytes:
    """The forecast's fan chart: ``recent_close`` (UTC index of open times), then from the
    newest close the predicted path and the interval band, each at its hour's close time.

    Returns:
        PNG bytes.
    """
    fig = new_figure(9.0, 4.2)
    ax = fig.add_axes((0.08, 0.12, 0.9, 0.78))
    step = pd.Timedelta(hours=1)
    closes_at = pd.DatetimeIndex(recent_close.index) + step  # a close belongs to its bar's end
    ax.plot(closes_at, recent_close.to_numpy(), color="black", linewidth=1.0, label="close")
    times = [closes_at[-1], *[p.timestamp for p in result.predictions]]
    path = [result.last_price, *[p.predicted_price for p in result.predictions]]
    lower = [result.last_price, *[p.lower for p in result.predictions]]
    upper = [result.last_price, *[p.upper for p in result.predictions]]
    level = f"{result.interval_level:.0%}"
    ax.fill_between(times, lower, upper, color="tab:blue", alpha=0.2, label=f"{level} interval")
    ax.plot(times, path, color="tab:blue", linewidth=1.6, label="predicted")
    ax.axvline(closes_at[-1], color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(
        f"{result.symbol} {result.model_type} {result.model_id}: {result.horizon_hours} h "
        f"forecast, P(up) {result.up_probability:.3f}",
        fontsize=10,
    )
    ax.set_ylabel("price")
    ax.legend(loc="upper left", fontsize=8)
    date_axis(ax)
    return to_png(fig)


def daily_series(rows: Sequence[Mapping[str, Any]], field: str) -> pd.DataFrame:
    """Per UTC day of the target time: mean of ``field`` (rows where it is set), its standard
    error (clustered by origin day), and the count.

    Returns:
        a frame indexed by day with columns ``value``, ``se``, ``n`` (empty when no row).
    """
    by_day: dict[pd.Timestamp, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if r.get(field) is not None:
            by_day[pd.Timestamp(r["target_time"]).floor("D")].append(r)
    out = []
    for day in sorted(by_day):
        sel = by_day[day]
        mean, se = clustered_mean(
            [float(r[field]) for r in sel], [f"{r['origin_time']:%Y-%m-%d}" for r in sel]
        )
        if se is None and len(sel) > 1:
            se = float(np.sqrt(mean * (1 - mean) / len(sel)))
        out.append({"day": day, "value": mean, "se": se, "n": len(sel)})
    if not out:
        return pd.DataFrame(columns=["value", "se", "n"])
    return pd.DataFrame(out).set_index("day")


def live_chart_png(
    model_id: str, direction_rows: Sequence[Mapping[str, Any]], interval_rows: Sequence[Any]
) -> bytes:
    """A model's daily live hit rate and interval coverage (see the module docstring).

    Args:
        direction_rows: scored entries with a direction (the model's own horizon).
        interval_rows: scored forecast hours (any horizon).

    Returns:
        PNG bytes.
    """
    fig = new_figure(9.0, 5.4)
    top = fig.add_axes((0.08, 0.56, 0.9, 0.36))
    bottom = fig.add_axes((0.08, 0.09, 0.9, 0.36), sharex=top)
    hits = daily_series(direction_rows, "hit")
    if len(hits):
        top.errorbar(hits.index, hits["value"], yerr=hits["se"].fillna(0), fmt="o-", ms=3,
                     color="tab:blue", label="hit rate (+-1 SE)")  # fmt: skip
        rose = daily_series(direction_rows, "rose")
        top.plot(rose.index, np.maximum(rose["value"], 1 - rose["value"]), color="grey",
                 linestyle="--", label="majority direction")  # fmt: skip
    top.axhline(0.5, color="black", linewidth=0.6)
    top.set_ylabel("hit rate")
    top.set_title(f"{model_id}: live record from the prediction ledger", fontsize=10)
    top.legend(loc="lower left", fontsize=8)
    cover = daily_series(interval_rows, "inside")
    if len(cover):
        bottom.errorbar(cover.index, cover["value"], yerr=cover["se"].fillna(0), fmt="o-",
                        ms=3, color="tab:green", label="80 % interval coverage")  # fmt: skip
    bottom.axhspan(0.75, 0.85, color="tab:green", alpha=0.1, label="accepted 0.75-0.85")
    bottom.axhline(0.8, color="tab:green", linewidth=0.6)
    bottom.set_ylabel("coverage")
    bottom.legend(loc="lower left", fontsize=8)
    date_axis(bottom)
    return to_png(fig)
