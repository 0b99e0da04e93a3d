"""The short job of bench/bench_latency.py, one function run three ways (Prefect warm
worker, Prefect stock process worker, Celery): the indicator signal of one symbol on 300
synthetic hourly candles (a few milliseconds of work).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow

from integrations.market_data.synthetic import generate_candles
from ml.analysis import analyze_candles


def short_job(symbol: str = "BTCUSDT") -> dict:
    """Signal of ``symbol`` on 300 synthetic hours. Returns {"signal", "confidence",
    "started_at"} (``started_at``: wall-clock time the job body began, epoch seconds)."""
    started = time.time()
    candles = generate_candles(symbol, "1h", datetime(2026, 9, 1, tzinfo=UTC), 300)
    out = analyze_candles(symbol, candles)
    return {"signal": out.signal, "confidence": out.confidence, "started_at": started}


@flow(name="latency-job")
def latency_job(symbol: str = "BTCUSDT") -> dict:
    """The short job as a Prefect flow. Returns :func:`short_job`'s dict."""
    return short_job(symbol)
