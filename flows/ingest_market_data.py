"""``ingest-market-data``: load candles from Binance, a CSV file or the synthetic generator,
check their quality, upsert them, and derive coarser timeframes.

Steps per symbol: fetch (tasks.market_data -> integrations.market_data.binance / csv_source
/ synthetic) -> quality checks + bulk upsert + resample (integrations.market_data.pipeline)
-> a table artifact with inserted/updated/unchanged/rejected counts per series.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.loader import load_store
from core.schemas.market_data import IngestParameters, IngestResult, SymbolIngestResult
from core.settings import load_settings
from tasks.market_data import (
    SYNTHETIC,
    fetch_binance_candles,
    generate_synthetic_candles,
    import_csv_task,
    publish_ingest_summary,
    store_candles_task,
)
from tasks.progress import ProgressReporter
from tasks.results import save_task_result


@flow(name="ingest-market-data", validate_parameters=True, timeout_seconds=3600)
def ingest_market_data(params: IngestParameters) -> IngestResult:
    """Ingest ``params``. Returns per-series counts and quality reports (:class:`IngestResult`)."""
    logger = get_run_logger()
    settings = load_settings()
    store = load_store()
    progress = ProgressReporter(f"ingest-market-data-{params.source}", min_step_pct=10)
    results: list[SymbolIngestResult] = []
    if params.source == "csv":
        progress.update(10, f"Importing {params.csv_path}")
        symbol = params.symbols[0] if params.symbols else None
        results = import_csv_task(
            store,
            params.csv_path,
            symbol,
            params.timeframe,
            list(params.resample_to),
            settings.allowed_data_dirs,  # checked again where the file is opened
        )
    else:
        start, end = params.time_range()
        for i, symbol in enumerate(params.symbols):
            progress.update(100 * i / len(params.symbols), f"Loading {symbol}")
            prior = None
            if params.source == "binance":
                frame, prior = fetch_binance_candles(symbol, params.timeframe, start, end, settings)
                source = "binance"
            else:
                frame = generate_synthetic_candles(
                    symbol, params.timeframe, start, end, params.seed
                )
                source = SYNTHETIC
            results += store_candles_task(
                store, symbol, params.timeframe, frame, source, list(params.resample_to), prior
            )
    result = IngestResult(source=params.source, results=results)
    publish_ingest_summary(result)
    progress.update(100, "Complete")
    for r in results:
        logger.info(
            "%s %s (%s): +%d new, %d updated, %d unchanged, %d rejected %s, %d gaps",
            r.symbol,
            r.timeframe,
            r.source,
            r.inserted,
            r.updated,
            r.unchanged,
            r.rejected,
            r.quality.rejected or "",
            r.quality.gaps,
        )
    return save_task_result(result, store)
