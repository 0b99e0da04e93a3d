"""Prefect tasks of ``llm-self-analysis``: context gathering, the LLM call, starting a retrain.

Thin wrappers around ``integrations.llm``, the store and the model registry records.
The LLM client retries by itself (3 attempts with backoff), so these tasks do not retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from core.schemas.self_improvement import LLMCall, LLMRecommendation
from core.settings import Settings
from integrations.llm import LLMClient
from integrations.store import Store


@task(name="model-accuracy", cache_policy=NONE)
def deployed_model_accuracy(store: Store, timeframe: str) -> tuple[dict[str, float], list[str]]:
    """Held-out accuracy of the deployed models of ``timeframe``.

    Returns:
        ({model_type: lowest val_accuracy over its deployed symbols}, symbols with a deployed
        model), both measured at training time on the newest held-out split.
    """
    accuracy: dict[str, float] = {}
    symbols: list[str] = []
    for doc in store.deployed_model_docs(timeframe=timeframe):
        acc = (doc.get("metrics") or {}).get("val_accuracy")
        if acc is None:
            continue
        t = doc["model_type"]
        accuracy[t] = min(float(acc), accuracy.get(t, 1.0))
        if doc["symbol"] not in symbols:
            symbols.append(doc["symbol"])
    return accuracy, symbols


@task(name="accuracy-history", cache_policy=NONE)
def accuracy_history(store: Store, timeframe: str, per_type: int = 5) -> dict[str, list[Any]]:
    """Held-out accuracy of the newest registered models (any status) per type.

    Returns:
        {model_type: [{symbol, version, status, val_accuracy, created_at}, ...]} newest first.
    """
    out: dict[str, list[Any]] = {}
    for doc in store.models_find({"timeframe": timeframe}, sort=[("created_at", -1)], limit=50):
        rows = out.setdefault(doc["model_type"], [])
        if len(rows) < per_type:
            rows.append(
                {
                    "symbol": doc.get("symbol"),
                    "version": doc.get("version"),
                    "status": doc.get("status"),
                    "val_accuracy": (doc.get("metrics") or {}).get("val_accuracy"),
                    "created_at": doc.get("created_at"),
                }
            )
    return out


@task(name="market-context", cache_policy=NONE)
def market_context(
    store: Store, symbols: list[str], timeframe: str, max_symbols: int = 5
) -> dict[str, Any]:
    """Recent market facts per symbol from stored candles (last 7 days of ``timeframe``).

    Returns:
        {symbol: {last_close, change_24h_pct, change_7d_pct, volatility_pct (std of bar
        returns), last_candle}}; symbols without candles are left out.
    """
    from core.market import bar_length

    bars_per_day = max(1, int(86400 / bar_length(timeframe).total_seconds()))
    out: dict[str, Any] = {}
    for symbol in symbols[:max_symbols]:
        candles = store.load_candles(symbol, timeframe, last_n=7 * bars_per_day + 1)
        if len(candles) < 2:
            continue
        close = candles["close"].to_numpy(np.float64)
        day = close[-min(len(close), bars_per_day + 1)]
        out[symbol] = {
            "last_close": round(float(close[-1]), 6),
            "change_24h_pct": round(float((close[-1] / day - 1) * 100), 3),
            "change_7d_pct": round(float((close[-1] / close[0] - 1) * 100), 3),
            "volatility_pct": round(float(np.std(np.diff(np.log(close))) * 100), 4),
            "last_candle": candles.index[-1].isoformat(),
        }
    return out


def build_llm_client(store: Store, settings: Settings) -> LLMClient:
    """An :class:`LLMClient` from the "llm" block.

    Raises:
        ConfigurationError: the block is missing (names LLM_API_KEY).
    """
    from blocks.llm import LLMBlock
    from blocks.loader import load_block

    block = load_block(LLMBlock)
    return LLMClient(
        client=block.get_client(),
        model=block.model,
        input_usd_per_1m=block.input_usd_per_1m,
        output_usd_per_1m=block.output_usd_per_1m,
        store=store,
        max_attempts=settings.llm_max_attempts,
        backoff_s=settings.llm_backoff_s,
    )


@task(name="ask-llm", cache_policy=NONE)
def ask_llm(
    store: Store, prompt: str, run_id: str, settings: Settings
) -> tuple[LLMRecommendation, LLMCall]:
    """One recommendation from the LLM (its client retries up to 3 attempts).

    Returns (answer, call cost). Raises what :meth:`LLMClient.recommend` raises, plus
    ConfigurationError when the llm block is missing.
    """
    client = build_llm_client(store, settings)
    rec, call = client.recommend(prompt, run_id=run_id)
    get_run_logger().info(
        "LLM %s: %s (confidence %.2f, %s) after %d attempt(s), %d+%d tokens, $%.6f",
        call.model,
        rec.recommendation,
        rec.confidence,
        rec.urgency,
        call.attempts,
        call.prompt_tokens,
        call.completion_tokens,
        call.cost_usd,
    )
    return rec, call


@task(name="start-adaptive-retrain", cache_policy=NONE)
def start_adaptive_retrain(
    deployment: str, model_types: list[str], reason: str, extra: Mapping[str, Any] | None = None
) -> tuple[str | None, str]:
    """Start the ``adaptive-retrain`` deployment without waiting.

    Returns:
        (flow-run id or None when the deployment does not exist, a note saying what happened).
    """
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    logger = get_run_logger()
    params = {"model_types": list(model_types), "reason": reason[:2000], **dict(extra or {})}
    try:
        run = run_deployment(
            name=deployment, parameters={"params": params}, timeout=0, tags=["llm-self-analysis"]
        )
    except ObjectNotFound:
        note = f"Deployment {deployment!r} is not deployed: retraining not started"
        logger.warning(note)
        return None, note
    note = f"Started {deployment} for {', '.join(model_types)} as flow run {run.id}"
    logger.info(note)
    return str(run.id), note
