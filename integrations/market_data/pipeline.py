"""Check and store candles; load the demo data of the run command.

Pure Python (no Prefect): the ingest-market-data tasks and the run command call these.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd

from core.exceptions import OperationalError, RetryableError
from core.schemas.market_data import DemoDataReport, QualityReport, SymbolIngestResult
from core.settings import Settings
from integrations.market_data.binance import BinanceClient
from integrations.market_data.csv_source import read_candles_csv
from integrations.market_data.quality import check_candles
from integrations.market_data.resample import resample_candles
from integrations.market_data.synthetic import SOURCE as SYNTHETIC
from integrations.market_data.synthetic import synthetic_range
from integrations.store import Store

log = logging.getLogger(__name__)

REAL_CSV = "Coinbase_BTCUSD_1h.csv"


def store_candles(
    store: Store,
    symbol: str,
    timeframe: str,
    frame: pd.DataFrame,
    *,
    source: str,
    resample_to: list[str] | tuple[str, ...] = (),
    prior: QualityReport | None = None,
) -> list[SymbolIngestResult]:
    """Quality-check ``frame``, upsert the good rows, then derive and upsert coarser timeframes.

    Args:
        frame: raw candles of ``timeframe`` (bad rows allowed: they are rejected and reported).
        source: the ``source`` tag stored on every candle (``binance``, ``csv:<file>``,
            ``synthetic``); resampled bars keep it.
        resample_to: coarser timeframes to derive from the clean rows (4h, 1d).
        prior: rejections made before (e.g. malformed rows from the source), merged in.

    Returns:
        one result for ``timeframe`` then one per ``resample_to`` entry.

    Raises:
        ServiceUnavailableError: MongoDB unreachable.
    """
    clean, report = check_candles(frame, timeframe)
    if prior is not None:
        report = prior.merge(report)
    rep = store.upsert_candles(symbol, timeframe, clean, source=source)
    results = [
        SymbolIngestResult(
            symbol=symbol,
            timeframe=timeframe,
            source=source,
            inserted=rep.inserted,
            updated=rep.updated,
            unchanged=rep.unchanged,
            rejected=report.rows_rejected,
            quality=report,
        )
    ]
    for target in resample_to:
        coarse = resample_candles(clean, timeframe, target)
        coarse_clean, coarse_report = check_candles(coarse, target)
        crep = store.upsert_candles(symbol, target, coarse_clean, source=source)
        results.append(
            SymbolIngestResult(
                symbol=symbol,
                timeframe=target,
                source=source,
                inserted=crep.inserted,
                updated=crep.updated,
                unchanged=crep.unchanged,
                rejected=coarse_report.rows_rejected,
                quality=coarse_report,
            )
        )
    log.info(
        "%s %s from %s: +%d new, %d updated, %d unchanged, %d rejected",
        symbol,
        timeframe,
        source,
        rep.inserted,
        rep.updated,
        rep.unchanged,
        report.rows_rejected,
    )
    return results


def import_csv(
    store: Store,
    path: str,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    resample_to: list[str] | tuple[str, ...] = (),
    allowed_dirs: Sequence[Path] | None = None,
) -> list[SymbolIngestResult]:
    """Import a CryptoDataDownload or plain OHLCV CSV file.

    Args:
        symbol: name to store under; default the file's symbol column.
        timeframe: expected timeframe; default the one inferred from the file.
        allowed_dirs: folders the file must lie in (see ``read_candles_csv``); None: any.

    Returns:
        as :func:`store_candles`.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: unknown format, no symbol, or a timeframe that contradicts the file.
    """
    from core.exceptions import InvalidInputError
    from core.market import check_symbol

    data = read_candles_csv(path, allowed_dirs=allowed_dirs)
    name = symbol or data.symbol
    if not name:
        raise InvalidInputError(f"{path}: the file names no symbol; pass symbols=['BTCUSDT']")
    check_symbol(name)
    tf = timeframe or data.timeframe
    if tf is None:
        raise InvalidInputError(f"{path}: cannot infer the timeframe; pass timeframe")
    if data.timeframe is not None and timeframe is not None and data.timeframe != timeframe:
        raise InvalidInputError(
            f"{path} holds {data.timeframe} bars, not {timeframe}: set timeframe={data.timeframe}"
        )
    return store_candles(store, name, tf, data.frame, source=data.source, resample_to=resample_to)


def load_demo_data(
    store: Store,
    settings: Settings,
    *,
    symbols: list[str] | None = None,
    days: int | None = None,
    client: BinanceClient | None = None,
    now: datetime | None = None,
    seed: int = 42,
) -> DemoDataReport:
    """Load demo candles: four symbols at 1h from Binance when it answers within
    ``settings.demo_probe_timeout_s``, else synthetic; plus the real Coinbase BTCUSD 1h file
    from ``settings.data_dir`` when present (stored as BTCUSD 1h).

    Binance is all or nothing: if any symbol fails, every demo symbol is synthetic, so the
    report names one source. Re-running is idempotent (synthetic bars are a pure function of
    seed, symbol and bar time).

    Returns:
        :class:`DemoDataReport` saying which source was used and why.

    Raises:
        ServiceUnavailableError: MongoDB unreachable.
    """
    symbols = symbols or list(settings.demo_symbols)
    days = days or settings.demo_days
    timeframe = settings.demo_timeframe
    now = now or datetime.now(UTC)
    end = pd.Timestamp(now).floor("h").to_pydatetime()
    start = end - timedelta(days=days)
    client = client or BinanceClient(
        settings.binance_base_url,
        timeout_s=settings.demo_probe_timeout_s,
        max_retries=1,
        max_retry_after_s=settings.demo_probe_timeout_s,
    )
    frames: dict[str, pd.DataFrame] = {}
    source, reason = SYNTHETIC, ""
    if client.ping(settings.demo_probe_timeout_s):
        try:
            for symbol in symbols:
                frames[symbol] = client.fetch_klines(symbol, timeframe, start, end).frame
            source, reason = "binance", f"Binance answered at {client.base_url}"
        except (RetryableError, OperationalError) as e:
            frames = {}
            reason = f"Binance failed during download ({type(e).__name__}: {e})"
    else:
        reason = (
            f"Binance not reachable at {client.base_url} within {settings.demo_probe_timeout_s:g} s"
        )
    client.close()
    if source == SYNTHETIC:
        frames = {s: synthetic_range(s, timeframe, start, end, seed=seed) for s in symbols}
        log.info("demo data: synthetic (%s)", reason)
    results = []
    for symbol in symbols:
        results += store_candles(store, symbol, timeframe, frames[symbol], source=source)
    real = None
    csv_path = settings.data_dir / REAL_CSV
    if csv_path.is_file():
        real = import_csv(store, str(csv_path), symbol="BTCUSD", timeframe="1h")[0]
    return DemoDataReport(
        source=source,  # type: ignore[arg-type]
        reason=reason,
        symbols=symbols,
        timeframe=timeframe,
        days=days,
        results=results,
        real_csv=real,
    )
