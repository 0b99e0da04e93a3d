"""``bulk-analysis``: a BUY/SELL/HOLD signal with a confidence for up to 500 symbols.

Steps: malformed symbols -> failed (reason 'invalid symbol') -> deployed models of the
timeframe (one query; ``model_version`` serves its own symbol instead, a candidate included)
-> the newest candles of every symbol in ONE batched store read ->
signals (the deployed model's where one exists, else indicators; ml.analysis) computed in
chunks in this process, or, from ml.analysis.DASK_MIN_SYMBOLS symbols on with a long-lived
Dask cluster (DASK_ADDRESS), as coarse batches on that cluster. No cluster is ever started
per run. Results sorted by confidence, failures with reasons, and a signal map artifact
(ml.signal_map). Model signals (with their P(up)) are recorded in the prediction ledger before
the result is saved. Progress: 'Analyzed n/N symbols'.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import SecretBytes

from blocks.loader import load_block
from blocks.model_store import ModelStoreBlock
from blocks.mongodb import MongoDBBlock
from core.schemas.analysis import BulkAnalysisParams, BulkAnalysisResult, SymbolAnalysis
from core.settings import load_settings
from ml.analysis import batch_symbols, split_valid_symbols, summarize, use_dask
from ml.ledger import signal_entries
from ml.registry_views import with_served_versions
from tasks.analysis import (
    analyze_loaded,
    analyze_on_dask,
    find_serving_models,
    load_candles_batch,
    publish_signal_map,
)
from tasks.progress import ProgressReporter
from tasks.results import save_task_result
from tasks.scoring import record_predictions

N_WORKERS = 2
MAX_BATCH = 50


@flow(name="bulk-analysis", validate_parameters=True, timeout_seconds=1800)
def bulk_analysis(params: BulkAnalysisParams) -> BulkAnalysisResult:
    """Analyse ``params.symbols``. Returns a :class:`BulkAnalysisResult` (status success
    even when some symbols failed; they are listed with reasons)."""
    started = time.perf_counter()
    logger = get_run_logger()
    total = len(params.symbols)
    progress = ProgressReporter(
        f"bulk-analysis-{params.timeframe}", min_step_pct=5, stage=f"Analyzed 0/{total} symbols"
    )
    valid, invalid = split_valid_symbols(params.symbols)
    mongo = load_block(MongoDBBlock)
    store = mongo.get_store()
    outcomes = []
    done = len(invalid)

    def advance(batch: list) -> None:
        nonlocal done
        outcomes.extend(batch)
        done += len(batch)
        progress.update(100 * done / total, f"Analyzed {done}/{total} symbols")

    models: dict = {}
    try:
        models, served = (
            find_serving_models(store, valid, params.timeframe, params.model_version)
            if valid
            else ({}, {})
        )
        frames = load_candles_batch(store, valid, params.timeframe, params.bars) if valid else {}
        model_dir = model_key = None
        if models:
            model_store = load_block(ModelStoreBlock)
            model_dir, model_key = model_store.directory, SecretBytes(model_store.get_key())
        with_model_first = [s for s in valid if s in models] + [s for s in valid if s not in models]
        address = load_settings().dask_address
        on_dask = use_dask(len(valid), address)
        batches = batch_symbols(with_model_first, N_WORKERS if on_dask else 1, MAX_BATCH)
        progress.update(100 * done / total, f"Analyzed {done}/{total} symbols")
        if on_dask:
            analyze_on_dask(address, batches, frames, mongo, models, model_dir, model_key, advance)
        else:
            for b in batches:
                advance(analyze_loaded(b, frames, store, models, model_dir, model_key))
    finally:
        store.client.close()
    result = summarize(
        with_served_versions(outcomes, served),
        timeframe=params.timeframe,
        total_symbols=total,
        min_confidence=params.min_confidence,
        batches=len(batches) if valid else 0,
        elapsed_s=time.perf_counter() - started,
        task_id=str(flow_run.get_id()),
        failed=invalid,
    )
    entries = signal_entries(result, result.task_id or "", models, made_at=datetime.now(UTC))
    if entries:  # the model signals, in the ledger before the result is acknowledged
        ledger_store = mongo.get_store()
        try:
            record_predictions(ledger_store, entries)
        finally:
            ledger_store.client.close()
    publish_signal_map(result)
    progress.update(100, f"Analyzed {total}/{total} symbols")
    logger.info(
        "bulk analysis %s: %d/%d analysed (%d with a model), %d failed, %d batches%s, %.1f s",
        params.timeframe,
        result.symbols_analyzed,
        total,
        sum(isinstance(o, SymbolAnalysis) and o.source == "model" for o in outcomes),
        len(result.failed_symbols),
        result.batches,
        " on Dask" if valid and on_dask else "",
        result.elapsed_s,
    )
    return save_task_result(result)
