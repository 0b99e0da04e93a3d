"""Prefect tasks of ingest-market-data: fetch from a source, check and store.

Thin wrappers around ``integrations.market_data``; only :class:`RetryableError` (Binance 429/5xx/
timeouts, MongoDB unreachable) is retried, with exponential backoff.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from core.schemas.market_data import IngestResult, QualityReport, SymbolIngestResult
from core.settings import Settings
from integrations.market_data.binance import BinanceClient
from integrations.market_data.pipeline import import_csv, store_candles
from integrations.market_data.synthetic import SOURCE as SYNTHETIC
from integrations.market_data.synthetic import synthetic_range
from integrations.store import Store
from tasks.retry import retry_only_retryable


@task(
    name="fetch-binance-candles",
    retries=3,
    retry_delay_seconds=exponential_backoff(5),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def fetch_binance_candles(
    symbol: str, timeframe: str, start: datetime, end: datetime, settings: Settings
) -> tuple[pd.DataFrame, QualityReport]:
    """Download closed klines of [start, end) from Binance (``settings.binance_base_url``).

    Returns:
        (raw candles, a report of the malformed rows Binance sent).

    Raises:
        RateLimitedError, ServiceUnavailableError (retried); PeerRejectedError (e.g. unknown symbol).
    """
    client = BinanceClient(
        settings.binance_base_url,
        timeout_s=settings.binance_timeout_s,
        max_retries=settings.binance_max_retries,
    )
    try:
        got = client.fetch_klines(symbol, timeframe, start, end)
    finally:
        client.close()
    prior = QualityReport(
        rows_in=len(got.frame) + got.rejected,
        rows_kept=len(got.frame),
        rejected={"malformed_row": got.rejected} if got.rejected else {},
        examples=got.examples,
    )
    return got.frame, prior


@task(name="generate-synthetic-candles", cache_policy=NONE)
def generate_synthetic_candles(
    symbol: str, timeframe: str, start: datetime, end: datetime, seed: int
) -> pd.DataFrame:
    """Synthetic candles of [start, end) (seeded regime-switching walk)."""
    return synthetic_range(symbol, timeframe, start, end, seed=seed)


@task(
    name="store-candles",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def store_candles_task(
    store: Store,
    symbol: str,
    timeframe: str,
    frame: pd.DataFrame,
    source: str,
    resample_to: list[str],
    prior: QualityReport | None = None,
) -> list[SymbolIngestResult]:
    """Quality-check and upsert candles (and their resampled timeframes).

    Returns one :class:`SymbolIngestResult` per stored timeframe.
    """
    return store_candles(
        store, symbol, timeframe, frame, source=source, resample_to=resample_to, prior=prior
    )


@task(
    name="import-csv-candles",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def import_csv_task(
    store: Store,
    path: str,
    symbol: str | None,
    timeframe: str,
    resample_to: list[str],
    allowed_dirs: list[Path] | None = None,
) -> list[SymbolIngestResult]:
    """Import one CSV file (CryptoDataDownload or plain OHLCV) lying in ``allowed_dirs``.

    Raises:
        NotFoundError, InvalidInputError: missing file, unknown format, timeframe mismatch,
            a file outside ``allowed_dirs``.
    """
    return import_csv(
        store,
        path,
        symbol=symbol,
        timeframe=timeframe,
        resample_to=resample_to,
        allowed_dirs=allowed_dirs,
    )


@task(name="publish-ingest-summary", cache_policy=NONE)
def publish_ingest_summary(result: IngestResult) -> None:
    """Publish one table row per stored series as the run's artifact."""
    create_table_artifact(
        key="ingest-market-data",
        table=[
            {
                "symbol": r.symbol,
                "timeframe": r.timeframe,
                "source": r.source,
                "inserted": r.inserted,
                "updated": r.updated,
                "unchanged": r.unchanged,
                "rejected": r.rejected,
                "rejected_by_reason": ", ".join(f"{k}={v}" for k, v in r.quality.rejected.items()),
                "gaps": r.quality.gaps,
                "missing_bars": r.quality.missing_bars,
            }
            for r in result.results
        ],
        description=f"Candles ingested from {result.source}",
    )


__all__ = [
    "SYNTHETIC",
    "fetch_binance_candles",
    "generate_synthetic_candles",
    "import_csv_task",
    "publish_ingest_summary",
    "store_candles_task",
]
