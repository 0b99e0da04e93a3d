"""Ledger entries of served predictions (pure: documents for ``prediction_ledger``).

One entry per served prediction and horizon, written before the result is acknowledged:

* predict-price: one ``price`` entry per forecast hour h: the origin (open time and close of
  the newest candle), the predicted price, the 80 % interval, ``confidence`` (P(direction))
  and the model's P(up). Its outcome is the close of the candle that opens h hours after the
  origin's open (the close at the point's ``timestamp``).
* bulk-analysis: one ``signal`` entry per symbol whose signal came from a deployed model:
  BUY/SELL/HOLD, P(up), the last close; its outcome is the close ``horizon_bars`` bars later
  (the model's own horizon). Indicator signals carry no probability and are not recorded.

``entry_id`` = ``<run id>:<symbol>:<kind>:<hour>``: the same run writes the same ids, so a
retried write adds nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core.market import bar_length
from core.schemas.analysis import BulkAnalysisResult, PredictPriceResult

KINDS = ("price", "signal")


def _base(task_id: str, symbol: str, kind: str, hour: int) -> dict[str, Any]:
    return {"entry_id": f"{task_id}:{symbol}:{kind}:{hour}", "task_id": task_id, "kind": kind}


def price_entries(
    result: PredictPriceResult, *, model_version: int | None, made_at: datetime
) -> list[dict[str, Any]]:
    """The ledger entries of a predict-price result (one per forecast hour).

    Returns:
        documents ready for ``store.ledger.entries_record`` (unscored).

    Raises:
        ValueError: the result has no ``task_id`` (entries must name the run that served them).
    """
    if not result.task_id:
        raise ValueError("a prediction needs its run id (task_id) before it is recorded")
    step = bar_length(result.timeframe)
    out = []
    for p in result.predictions:
        out.append(
            {
                **_base(result.task_id, result.symbol, "price", p.hour),
                "model_id": result.model_id,
                "model_version": model_version,
                "model_type": result.model_type,
                "model_horizon_bars": result.model_horizon_bars,
                "symbol": result.symbol,
                "timeframe": result.timeframe,
                "made_at": made_at,
                "created_at": made_at,
                "origin_time": result.origin_time,
                "origin_price": result.last_price,
                "hour": p.hour,
                "target_time": result.origin_time + step * p.hour,
                "predicted_price": p.predicted_price,
                "lower": p.lower,
                "upper": p.upper,
                "interval_level": result.interval_level,
                "confidence": p.confidence,
                "up_probability": result.up_probability,
                "scored": False,
            }
        )
    return out


def signal_entries(
    result: BulkAnalysisResult,
    task_id: str,
    model_docs: Mapping[str, Mapping[str, Any]],
    *,
    made_at: datetime,
) -> list[dict[str, Any]]:
    """The ledger entries of a bulk-analysis result: one per model signal.

    Args:
        model_docs: the deployed model documents the run used, by symbol (their version
            and horizon).

    Returns:
        documents ready for ``store.ledger.entries_record`` (unscored).
    """
    step = bar_length(result.timeframe)
    out = []
    for a in result.results:
        doc = model_docs.get(a.symbol)
        if a.source != "model" or a.up_probability is None or doc is None:
            continue
        horizon = int(doc.get("horizon_bars") or 1)
        out.append(
            {
                **_base(task_id, a.symbol, "signal", horizon),
                "model_id": a.model_id,
                "model_version": doc.get("version"),
                "model_type": doc.get("model_type"),
                "model_horizon_bars": horizon,
                "symbol": a.symbol,
                "timeframe": result.timeframe,
                "made_at": made_at,
                "created_at": made_at,
                "origin_time": a.timestamp,
                "origin_price": a.price,
                "hour": horizon,
                "target_time": a.timestamp + step * horizon,
                "signal": a.signal,
                "confidence": a.confidence,
                "up_probability": a.up_probability,
                "scored": False,
            }
        )
    return out
