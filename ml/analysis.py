"""Per-symbol trading signals for bulk analysis (pure: no Prefect, no I/O of its own).

A symbol gets the deployed model's signal when one is deployed for it, else an indicator
signal; ``source`` says which. Both give a score in [-1, 1] (positive = rise expected):

* model: ``score = 2p - 1`` for the model's probability p that the price is higher after
  its horizon.
* indicators (from :mod:`backtest.indicators`, never re-implemented here), each scaled by
  the symbol's own recent volatility so symbols of any price compare:

  - RSI(14, Wilder): ``(50 - rsi) / 25`` (oversold -> buy), clipped to [-1, 1];
  - MACD(12, 26, 9) histogram over ``close * sigma`` (sigma: standard deviation of the
    last 50 one-bar log returns), clipped;
  - trend: ``(EMA20 / EMA50 - 1) / (sigma * sqrt(20))``, clipped;

  and ``score`` is their mean.

``confidence = |score|`` (the strength of the directional evidence). The signal is BUY when
``score >= threshold``, SELL when ``score <= -threshold`` and HOLD otherwise (default
threshold 0.15), so a HOLD always has confidence below the threshold and results sorted by
confidence put the strongest opportunities first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from backtest.indicators import ema, macd, rsi
from core.exceptions import InsufficientDataError
from core.market import is_valid_symbol
from core.schemas.analysis import BulkAnalysisResult, FailedSymbol, SymbolAnalysis

if TYPE_CHECKING:
    from ml.predictor import LoadedModel

log = logging.getLogger(__name__)

#: Fewest valid symbols for which bulk analysis fans out to a long-lived Dask cluster
#: (DASK_ADDRESS); below it one process is used. Measured by bench/bench_bulk_analysis.py:
#: once candles come from their tails and models share one compiled pass, analysing 300
#: symbols in one process took 0.7 s and a 2-process cluster was 0.81-2.1x that time from 10
#: to 300 symbols (never reliably faster), so only a run of the 500-symbol maximum fans out.
DASK_MIN_SYMBOLS = 500

REASON_INVALID = "invalid symbol"
REASON_NO_DATA = "no data"
REASON_TOO_LITTLE = "too little data"
REASON_BAD_DATA = "invalid data"
REASON_ERROR = "analysis error"


@dataclass(frozen=True)
class SignalConfig:
    """Indicator periods and the signal threshold.

    Attributes:
        min_bars: fewest candles an indicator signal needs (EMA50 and MACD's 34-bar warm-up).
    """

    rsi_period: int = 14
    macd_fast: int = 12
    macd_slow: int = 26
    macd_signal: int = 9
    trend_fast: int = 20
    trend_slow: int = 50
    vol_bars: int = 50
    threshold: float = 0.15
    min_bars: int = 60


def signal_from_score(score: float, threshold: float) -> tuple[str, float]:
    """Return ``(signal, confidence)`` for a score in [-1, 1] (see module docstring)."""
    score = float(np.clip(score, -1.0, 1.0))
    if score >= threshold:
        signal = "BUY"
    elif score <= -threshold:
        signal = "SELL"
    else:
        signal = "HOLD"
    return signal, abs(score)


def indicator_snapshot(candles: pd.DataFrame, config: SignalConfig) -> dict[str, Any]:
    """Newest values of RSI, MACD, EMAs, volatility and their combined score.

    Returns:
        dict with rsi, macd, macd_signal, macd_hist, ema_fast, ema_slow, volatility_pct
        (per bar), trend (up|down|flat), rsi_score, macd_score, trend_score, score.

    Raises:
        InsufficientDataError: fewer than ``config.min_bars`` candles.
    """
    close = candles["close"].to_numpy(np.float64)
    if len(close) < config.min_bars:
        raise InsufficientDataError(
            f"{REASON_TOO_LITTLE}: {len(close)} candles, need at least {config.min_bars}"
        )
    r = float(rsi(close, config.rsi_period)[-1])
    line, sig, hist = (
        float(a[-1]) for a in macd(close, config.macd_fast, config.macd_slow, config.macd_signal)
    )
    fast = float(ema(close, config.trend_fast)[-1])
    slow = float(ema(close, config.trend_slow)[-1])
    log_ret = np.diff(np.log(close[-(config.vol_bars + 1) :]))
    sigma = max(float(np.std(log_ret)), 1e-12)
    last = float(close[-1])
    rsi_score = float(np.clip((50.0 - r) / 25.0, -1, 1))
    macd_score = float(np.clip(hist / (last * sigma), -1, 1))
    gap = fast / slow - 1.0
    trend_score = float(np.clip(gap / (sigma * np.sqrt(config.trend_fast)), -1, 1))
    trend = "up" if gap > 0 else "down" if gap < 0 else "flat"
    return {
        "rsi": r,
        "macd": line,
        "macd_signal": sig,
        "macd_hist": hist,
        "ema_fast": fast,
        "ema_slow": slow,
        "volatility_pct": sigma * 100.0,
        "trend": trend,
        "rsi_score": rsi_score,
        "macd_score": macd_score,
        "trend_score": trend_score,
        "score": (rsi_score + macd_score + trend_score) / 3.0,
    }


def _check_prices(candles: pd.DataFrame) -> str | None:
    close = candles["close"].to_numpy(np.float64)
    if not np.isfinite(close).all() or (close <= 0).any():
        return f"{REASON_BAD_DATA}: non-finite or non-positive close prices"
    return None


def analyze_candles(
    symbol: str,
    candles: pd.DataFrame,
    *,
    model: LoadedModel | None = None,
    config: SignalConfig | None = None,
) -> SymbolAnalysis | FailedSymbol:
    """Signal of one symbol from its candles (oldest first).

    With ``model``: the model's signal; when the candles are too few for the model's
    window the indicator signal is used instead (``source`` says which).

    Returns:
        a :class:`SymbolAnalysis`, or a :class:`FailedSymbol` naming the reason
        (no data, too little data, invalid data).
    """
    config = config or SignalConfig()
    if candles.empty:
        return FailedSymbol(symbol=symbol, reason=f"{REASON_NO_DATA}: no candles stored")
    bad = _check_prices(candles)
    if bad:
        return FailedSymbol(symbol=symbol, reason=bad)
    try:
        snap = indicator_snapshot(candles, config)
    except InsufficientDataError as e:
        return FailedSymbol(symbol=symbol, reason=str(e))
    score, source, model_id, p_up = float(snap["score"]), "indicators", None, None
    if model is not None:
        try:
            p_up = float(model.predict_up_probability(candles))
            score, source, model_id = 2.0 * p_up - 1.0, "model", model.record.model_id
        except InsufficientDataError as e:
            log.info("%s: model %s not usable (%s); indicator signal", symbol, model_id, e)
            p_up = None
    signal, confidence = signal_from_score(score, config.threshold)
    indicators = {
        k: snap[k]
        for k in ("rsi", "macd", "macd_signal", "macd_hist", "ema_fast", "ema_slow", "trend")
    }
    indicators["volatility_pct"] = snap["volatility_pct"]
    indicators["indicator_score"] = snap["score"]
    return SymbolAnalysis(
        symbol=symbol,
        signal=signal,  # type: ignore[arg-type]
        confidence=confidence,
        price=float(candles["close"].iloc[-1]),
        timestamp=candles.index[-1].to_pydatetime(),
        indicators=indicators,
        source=source,  # type: ignore[arg-type]
        model_id=model_id,
        up_probability=p_up,
    )


def analyze_symbols(
    symbols: Iterable[str],
    load_candles: Callable[[str], pd.DataFrame],
    model_for: Callable[[str], LoadedModel | None] | None = None,
    config: SignalConfig | None = None,
) -> list[SymbolAnalysis | FailedSymbol]:
    """Analyse ``symbols`` one after the other (the body of one batch).

    Args:
        load_candles: returns a symbol's newest candles (empty frame: none stored).
        model_for: returns the deployed model of a symbol, or None.

    Returns:
        one :class:`SymbolAnalysis` or :class:`FailedSymbol` per symbol, in order. An
        unexpected error of one symbol is reported as its failure; the others go on.
    """
    out: list[SymbolAnalysis | FailedSymbol] = []
    for symbol in symbols:
        try:
            model = model_for(symbol) if model_for else None
            out.append(analyze_candles(symbol, load_candles(symbol), model=model, config=config))
        except Exception as e:  # one bad symbol must not sink the batch
            log.warning("%s: analysis failed: %s", symbol, e)
            out.append(FailedSymbol(symbol=symbol, reason=f"{REASON_ERROR}: {type(e).__name__}"))
    return out


def split_valid_symbols(symbols: Iterable[str]) -> tuple[list[str], list[FailedSymbol]]:
    """Separate well-formed symbols from malformed ones.

    Returns:
        (valid symbols in order, failures with reason 'invalid symbol: ...').
    """
    valid: list[str] = []
    failed: list[FailedSymbol] = []
    for s in symbols:
        if is_valid_symbol(s):
            valid.append(s)
        else:
            failed.append(
                FailedSymbol(
                    symbol=str(s),
                    reason=f"{REASON_INVALID}: use upper-case BASE+QUOTE such as BTCUSDT",
                )
            )
    return valid, failed


def use_dask(n_symbols: int, dask_address: str | None, min_symbols: int = DASK_MIN_SYMBOLS) -> bool:
    """Whether ``n_symbols`` are analysed on Dask: only with a long-lived cluster
    (``dask_address``; a cluster started per run costs more than it saves) and from
    ``min_symbols`` on. Returns True for the Dask path."""
    return bool(dask_address) and n_symbols >= min_symbols


def batch_symbols(symbols: list[str], n_workers: int, max_batch: int = 50) -> list[list[str]]:
    """Deal ``symbols`` round-robin into coarse batches: one per worker, at most
    ``max_batch`` each. Put the symbols with a model first: they are then spread evenly
    (each costs a model load and a network call, the others a few milliseconds).

    Returns:
        list of non-empty batches holding every symbol once.
    """
    if not symbols:
        return []
    n_batches = max(max(1, n_workers), -(-len(symbols) // max_batch))
    n_batches = min(n_batches, len(symbols))
    return [symbols[i::n_batches] for i in range(n_batches)]


def summarize(
    outcomes: Iterable[SymbolAnalysis | FailedSymbol],
    *,
    timeframe: str,
    total_symbols: int,
    min_confidence: float | None,
    batches: int,
    elapsed_s: float,
    task_id: str | None = None,
    failed: Iterable[FailedSymbol] = (),
) -> BulkAnalysisResult:
    """Assemble the result: successes sorted by confidence (highest first, ties by symbol),
    those below ``min_confidence`` left out and counted, failures listed with reasons.

    Returns:
        a :class:`BulkAnalysisResult`.
    """
    ok: list[SymbolAnalysis] = []
    failures = list(failed)
    for o in outcomes:
        (ok if isinstance(o, SymbolAnalysis) else failures).append(o)  # type: ignore[arg-type]
    ok.sort(key=lambda a: (-a.confidence, a.symbol))
    kept = [a for a in ok if min_confidence is None or a.confidence >= min_confidence]
    return BulkAnalysisResult(
        timeframe=timeframe,
        total_symbols=total_symbols,
        symbols_analyzed=len(ok),
        failed_symbols=failures,
        results=kept,
        below_min_confidence=len(ok) - len(kept),
        batches=batches,
        task_id=task_id,
        elapsed_s=elapsed_s,
    )


def best_deployed_per_symbol(
    model_docs: Iterable[dict[str, Any]], symbols: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Pick, per symbol, the deployed model with the best held-out accuracy
    (:func:`ml.metrics.selection_accuracy`)
    (the rule of ``ModelRegistry.deployed`` without a model type).

    Args:
        model_docs: the deployed ``models`` documents of one timeframe (the pointers' models).

    Returns:
        ``{symbol: document}`` for the symbols in ``symbols`` that have one.
    """
    wanted = set(symbols)
    best: dict[str, dict[str, Any]] = {}

    from ml.metrics import selection_accuracy  # sklearn: imported only when ranking models

    def acc(d: dict[str, Any]) -> float:
        return selection_accuracy(d.get("metrics"))

    for d in model_docs:
        s = d.get("symbol")
        if s in wanted and (s not in best or acc(d) > acc(best[s])):
            best[s] = d
    return best
