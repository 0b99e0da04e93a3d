"""Prefect tasks of the ``bulk-analysis`` flow.

One task analyses a coarse batch of symbols (each Prefect task on Dask costs ~150 ms, a
symbol a few milliseconds): it opens its own store from the MongoDB block it is given,
reads each symbol's newest candles and computes the signal (:mod:`ml.analysis`). Keras is
imported only by a batch holding a symbol with a deployed model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff
from pydantic import SecretBytes

from blocks.mongodb import MongoDBBlock
from core.schemas.analysis import FailedSymbol, SymbolAnalysis
from integrations.store import Store
from ml.analysis import SignalConfig, analyze_symbols, best_deployed_per_symbol
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
    docs = store.models_find({"status": "deployed", "timeframe": timeframe})
    return best_deployed_per_symbol(docs, symbols)


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
    """Analyse one batch of symbols (the body of :func:`analyze_batch`, callable directly).

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
    loaded: dict[str, Any] = {}
    frames = store.load_candles_many(symbols, timeframe, last_n=bars)

    def load(symbol: str) -> pd.DataFrame:
        return frames[symbol]

    def model_for(symbol: str) -> Any:
        doc = model_docs.get(symbol)
        if doc is None or model_key is None or model_dir is None:
            return None
        if doc["model_id"] not in loaded:
            from ml.registry import ModelRecord, ModelRegistry  # imports keras: only if needed

            registry = ModelRegistry(store, Path(model_dir), model_key.get_secret_value())
            loaded[doc["model_id"]] = registry.load(ModelRecord.from_doc(doc))
        return loaded[doc["model_id"]]

    try:
        return analyze_symbols(symbols, load, model_for, config)
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
