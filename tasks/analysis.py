"""Prefect tasks of the ``bulk-analysis`` flow.

The flow reads every symbol's candles in ONE batched store read (:func:`load_candles_batch`),
then analyses them in coarse chunks: in the flow's own process (:func:`analyze_loaded`), or,
from :data:`ml.analysis.DASK_MIN_SYMBOLS` symbols on and only on a long-lived cluster
(``DASK_ADDRESS``), as plain Dask futures (:func:`analyze_on_dask`; a Prefect task on Dask
costs ~150 ms, a symbol a few milliseconds). Keras is imported only for a symbol with a
deployed model; each model is loaded once and run once (one batched inference) per symbol.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff
from pydantic import SecretBytes

from blocks.mongodb import MongoDBBlock
from core.schemas.analysis import BulkAnalysisResult, FailedSymbol, SymbolAnalysis
from integrations.store import Store
from ml.analysis import SignalConfig, analyze_symbols, best_deployed_per_symbol
from ml.registry_views import label, serving_version
from ml.signal_map import render_signal_map
from tasks.retry import retry_only_retryable


@task(
    name="find-deployed-models",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def find_deployed_models(
    store: Store, symbols: list[str], timeframe: str
) -> dict[str, dict[str, Any]]:
    """Deployed model documents of ``timeframe``, the best one per symbol of ``symbols``.

    Returns:
        ``{symbol: models document}`` (symbols without a deployed model are absent).

    Raises:
        ServiceUnavailableError (retried): MongoDB unreachable.
    """
    docs = store.deployed_model_docs(timeframe=timeframe)
    return best_deployed_per_symbol(docs, symbols)


@task(
    name="find-serving-models",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def find_serving_models(
    store: Store, symbols: list[str], timeframe: str, model_version: str | None
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[str, bool]]]:
    """The model document per symbol (the deployed one; for the symbol of ``model_version``
    that version, a candidate included), and per model id its version name and whether it
    is deployed.

    Raises:
        NotFoundError, InvalidInputError: ``model_version`` cannot serve (see
            :func:`ml.registry_views.serving_version`).
        ServiceUnavailableError (retried): MongoDB unreachable.
    """
    models = find_deployed_models.fn(store, symbols, timeframe)
    served = {d["model_id"]: (label(d), True) for d in models.values()}
    if model_version is not None:
        record, deployed = serving_version(
            store, model_version, symbols=symbols, timeframe=timeframe
        )
        models[record.symbol] = record.to_doc()
        served[record.model_id] = (label(record), deployed)
    return models, served


@task(
    name="load-candles-batch",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def load_candles_batch(
    store: Store, symbols: list[str], timeframe: str, bars: int
) -> dict[str, pd.DataFrame]:
    """The newest ``bars`` candles of every symbol, in one batched read.

    Returns:
        ``{symbol: frame}`` (empty frame: no candles stored).

    Raises:
        ServiceUnavailableError (retried): MongoDB unreachable.
    """
    return store.load_candles_many(symbols, timeframe, last_n=bars)


def analyze_frames(
    symbols: list[str],
    frames: dict[str, pd.DataFrame],
    store: Store | None,
    model_docs: dict[str, dict[str, Any]],
    model_dir: str | None,
    model_key: SecretBytes | None,
    config: SignalConfig | None = None,
) -> list[SymbolAnalysis | FailedSymbol]:
    """Analyse ``symbols`` from candles already read (pure of Prefect; runs on Dask too).

    Args:
        store: where the model registry reads model documents (needed only when
            ``model_docs`` is not empty).
        model_docs: deployed model documents of ``symbols``.
        model_dir, model_key: the model-store block's folder and AES key.

    Returns:
        one outcome per symbol, in order.
    """
    loaded: dict[str, Any] = {}
    forward: Any = None  # one compiled pass per architecture, shared by the chunk's models

    def model_for(symbol: str) -> Any:
        nonlocal forward
        doc = model_docs.get(symbol)
        if doc is None or model_key is None or model_dir is None or store is None:
            return None
        if doc["model_id"] not in loaded:
            from ml.predictor import SharedForward  # keras: imported only when needed
            from ml.registry import ModelRecord, ModelRegistry

            forward = forward or SharedForward()
            registry = ModelRegistry(store, Path(model_dir), model_key.get_secret_value())
            loaded[doc["model_id"]] = registry.load(ModelRecord.from_doc(doc), forward)
        return loaded[doc["model_id"]]

    return analyze_symbols(symbols, frames.__getitem__, model_for, config)


def _analyze_frames_remote(
    symbols: list[str],
    frames: dict[str, pd.DataFrame],
    mongo: MongoDBBlock,
    model_docs: dict[str, dict[str, Any]],
    model_dir: str | None,
    model_key: SecretBytes | None,
) -> list[SymbolAnalysis | FailedSymbol]:
    """Body of one Dask future: opens a store only when a model must be loaded."""
    store = mongo.get_store() if model_docs else None
    try:
        return analyze_frames(symbols, frames, store, model_docs, model_dir, model_key)
    finally:
        if store is not None:
            store.client.close()


@task(name="analyze-loaded-symbols", cache_policy=NONE)
def analyze_loaded(
    symbols: list[str],
    frames: dict[str, pd.DataFrame],
    store: Store,
    model_docs: dict[str, dict[str, Any]],
    model_dir: str | None,
    model_key: SecretBytes | None,
) -> list[SymbolAnalysis | FailedSymbol]:
    """Prefect task around :func:`analyze_frames` in the flow's process (one chunk).

    Returns:
        one outcome per symbol, in order; per-symbol failures are outcomes, not errors.
    """
    return analyze_frames(symbols, frames, store, model_docs, model_dir, model_key)


def analyze_on_dask(
    address: str,
    batches: list[list[str]],
    frames: dict[str, pd.DataFrame],
    mongo: MongoDBBlock,
    model_docs: dict[str, dict[str, Any]],
    model_dir: str | None,
    model_key: SecretBytes | None,
    on_batch: Any = None,
) -> list[SymbolAnalysis | FailedSymbol]:
    """Analyse ``batches`` on the long-lived Dask cluster at ``address`` (one plain future
    per batch, each carrying its symbols' candles); ``on_batch(outcomes)`` is called as
    each batch finishes.

    Returns:
        the outcomes of every batch (in completion order).

    Raises:
        ServiceUnavailableError: the scheduler did not answer.
    """
    from distributed import Client, as_completed

    from core.exceptions import ServiceUnavailableError

    try:
        client = Client(address, timeout="10s")
    except OSError as e:
        raise ServiceUnavailableError(f"Dask scheduler at {address} did not answer: {e}") from e
    try:
        futures = [
            client.submit(
                _analyze_frames_remote,
                b,
                {s: frames[s] for s in b},
                mongo,
                {s: model_docs[s] for s in b if s in model_docs},
                model_dir,
                model_key,
                pure=False,
            )
            for b in batches
        ]
        out: list[SymbolAnalysis | FailedSymbol] = []
        for future in as_completed(futures):
            batch = future.result()
            out.extend(batch)
            if on_batch is not None:
                on_batch(batch)
        return out
    finally:
        client.close()


def run_analysis_batch(
    symbols: list[str],
    timeframe: str,
    bars: int,
    mongo: MongoDBBlock,
    model_docs: dict[str, dict[str, Any]],
    model_dir: str | None,
    model_key: SecretBytes | None,
    config: SignalConfig | None = None,
) -> list[SymbolAnalysis | FailedSymbol]:
    """Read and analyse one batch of symbols with a store of its own (one batched read).

    Args:
        bars: newest candles read per symbol.
        model_docs: deployed model documents of the batch's symbols.
        model_dir, model_key: the model-store block's folder and AES key (needed only
            when ``model_docs`` is not empty).

    Returns:
        one outcome per symbol, in order.

    Raises:
        ServiceUnavailableError: MongoDB unreachable while reading the batch's candles.
    """
    store = mongo.get_store()
    try:
        frames = store.load_candles_many(symbols, timeframe, last_n=bars)
        return analyze_frames(symbols, frames, store, model_docs, model_dir, model_key, config)
    finally:
        store.close()


@task(
    name="analyze-symbol-batch",
    retries=2,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def analyze_batch(
    symbols: list[str],
    timeframe: str,
    bars: int,
    mongo: MongoDBBlock,
    model_docs: dict[str, dict[str, Any]],
    model_dir: str | None,
    model_key: SecretBytes | None,
) -> list[SymbolAnalysis | FailedSymbol]:
    """Prefect task (one per batch, on the Dask runner) around :func:`run_analysis_batch`.

    Returns:
        one outcome per symbol, in order; per-symbol failures are outcomes, not errors.

    Raises:
        ServiceUnavailableError (retried): MongoDB unreachable.
    """
    return run_analysis_batch(symbols, timeframe, bars, mongo, model_docs, model_dir, model_key)


@task(name="publish-signal-map", cache_policy=NONE)
def publish_signal_map(result: BulkAnalysisResult) -> str:
    """Markdown artifact ``bulk-analysis-signal-map-<timeframe>``: the signal map of
    ``result`` (ml.signal_map: one tile per symbol, coloured by signal, shaded by confidence).

    Returns:
        the artifact's key.
    """
    started = time.perf_counter()
    png = render_signal_map(result)
    drawn_s = time.perf_counter() - started
    image = base64.b64encode(png).decode("ascii")
    key = f"bulk-analysis-signal-map-{result.timeframe}".lower()
    create_markdown_artifact(
        f"# Signal map ({result.timeframe})\n\n"
        f"![signal map of {len(result.results)} symbols](data:image/png;base64,{image})\n\n"
        "Green: BUY, red: SELL, grey: HOLD, white: failed (its reason in the tile); the "
        "darker the tile, the higher the confidence. Bold: the deployed model's signal, "
        "else the indicators'. The full table is in the result artifact.\n",
        key=key,
        description=f"BUY/SELL/HOLD and confidence of {result.total_symbols} symbols",
    )
    get_run_logger().info("signal map drawn in %.2f s (%d bytes)", drawn_s, len(png))
    return key
