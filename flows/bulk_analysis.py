"""``bulk-analysis``: a BUY/SELL/HOLD signal with a confidence for up to 500 symbols.

Steps: malformed symbols -> failed (reason 'invalid symbol') -> deployed models of the
timeframe (one query) -> coarse batches (one per Dask worker, at most 50 symbols) fanned out
on the Dask task runner; each batch reads its symbols' candles and computes the model's
signal where a model is deployed, else the indicator signal (ml.analysis) -> results sorted
by confidence, failures with reasons. Progress: 'Analyzed n/N symbols'.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.futures import as_completed
from prefect.runtime import flow_run
from pydantic import SecretBytes

from blocks.loader import load_block
from blocks.model_store import ModelStoreBlock
from blocks.mongodb import MongoDBBlock
from core.schemas.analysis import BulkAnalysisParams, BulkAnalysisResult, SymbolAnalysis
from core.settings import Settings
from ml.analysis import batch_symbols, split_valid_symbols, summarize
from tasks.analysis import analyze_batch, find_deployed_models
from tasks.progress import ProgressReporter
from tasks.results import save_task_result
from tasks.runners import dask_task_runner

N_WORKERS = 2
MAX_BATCH = 50


@flow(
    name="bulk-analysis",
    validate_parameters=True,
    timeout_seconds=1800,
    task_runner=dask_task_runner(Settings(), n_workers=N_WORKERS),
)
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
    models = find_deployed_models(mongo.get_store(), valid, params.timeframe) if valid else {}
    model_dir = model_key = None
    if models:
        model_store = load_block(ModelStoreBlock)
        model_dir, model_key = model_store.directory, SecretBytes(model_store.get_key())
    with_model_first = [s for s in valid if s in models] + [s for s in valid if s not in models]
    batches = batch_symbols(with_model_first, N_WORKERS, MAX_BATCH)
    futures = [
        analyze_batch.submit(
            b,
            params.timeframe,
            params.bars,
            mongo,
            {s: models[s] for s in b if s in models},
            model_dir,
            model_key,
        )
        for b in batches
    ]
    outcomes = []
    done = len(invalid)
    progress.update(100 * done / total, f"Analyzed {done}/{total} symbols")
    for future in as_completed(futures):
        batch = future.result()
        outcomes.extend(batch)
        done += len(batch)
        progress.update(100 * done / total, f"Analyzed {done}/{total} symbols")
    result = summarize(
        outcomes,
        timeframe=params.timeframe,
        total_symbols=total,
        min_confidence=params.min_confidence,
        batches=len(batches),
        elapsed_s=time.perf_counter() - started,
        task_id=str(flow_run.get_id()),
        failed=invalid,
    )
    progress.update(100, f"Analyzed {total}/{total} symbols")
    logger.info(
        "bulk analysis %s: %d/%d analysed (%d with a model), %d failed, %d batches, %.1f s",
        params.timeframe,
        result.symbols_analyzed,
        total,
        sum(isinstance(o, SymbolAnalysis) and o.source == "model" for o in outcomes),
        len(result.failed_symbols),
        len(batches),
        result.elapsed_s,
    )
    return save_task_result(result)
