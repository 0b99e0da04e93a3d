"""bulk-analysis: indicator/model signals, batching, failures with reasons (TC-ASYNC-011/012)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from pydantic import ValidationError

from backtest.indicators import rsi
from blocks.mongodb import MongoDBBlock
from core.schemas.analysis import BulkAnalysisParams, FailedSymbol, SymbolAnalysis
from integrations.market_data.synthetic import generate_candles
from integrations.store import Store
from ml.analysis import (
    DASK_MIN_SYMBOLS,
    SignalConfig,
    analyze_candles,
    batch_symbols,
    indicator_snapshot,
    split_valid_symbols,
    summarize,
    use_dask,
)
from tasks.analysis import analyze_frames, analyze_on_dask, run_analysis_batch
from tests.ml.helpers import deploy_small_model, make_candles

START = datetime(2026, 9, 1, tzinfo=UTC)
GOOD = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "DOTUSDT"]


def _ramp(n: int, step: float) -> pd.DataFrame:
    """Candles whose close moves by ``step`` (log) every bar plus a small zig-zag."""
    lc = np.log(100.0) + step * np.arange(n) + 0.002 * (-1) ** np.arange(n)
    close = np.exp(lc)
    idx = pd.date_range(START, periods=n, freq="1h", name="open_time")
    return pd.DataFrame(
        {"open": close, "high": close * 1.001, "low": close * 0.999, "close": close, "volume": 1.0},
        index=idx,
    )


@pytest.mark.tc("TC-ASYNC-011")
def test_indicator_signal_follows_data_and_names_its_inputs() -> None:
    up = analyze_candles("AAAUSDT", _ramp(200, 0.003))
    down = analyze_candles("BBBUSDT", _ramp(200, -0.003))
    assert isinstance(up, SymbolAnalysis) and isinstance(down, SymbolAnalysis)
    assert up.source == down.source == "indicators" and up.model_id is None
    # a steady rise: trend up, MACD above its signal; RSI says overbought - the votes combine
    assert up.indicators["trend"] == "up" and down.indicators["trend"] == "down"
    assert up.indicators["macd"] > 0 > down.indicators["macd"]
    assert up.indicators["rsi"] > 70 > 30 > down.indicators["rsi"]
    assert 0.0 <= up.confidence <= 1.0
    assert up.confidence == pytest.approx(abs(up.indicators["indicator_score"]))
    close = _ramp(200, 0.003)["close"].to_numpy()
    assert up.indicators["rsi"] == pytest.approx(rsi(close, 14)[-1])
    assert up.price == pytest.approx(close[-1])
    snap = indicator_snapshot(make_candles(300, seed=3), SignalConfig())
    expected = {"BUY": snap["score"] >= 0.15, "SELL": snap["score"] <= -0.15}
    sig = analyze_candles("CCCUSDT", make_candles(300, seed=3))
    assert sig.signal == next((k for k, v in expected.items() if v), "HOLD")


@pytest.mark.tc("TC-ASYNC-012")
def test_failures_carry_reasons() -> None:
    assert analyze_candles("AAAUSDT", _ramp(59, 0.001)).reason.startswith("too little data")
    assert analyze_candles("AAAUSDT", _ramp(0, 0.001)).reason.startswith("no data")
    bad = _ramp(100, 0.001)
    bad.iloc[50, bad.columns.get_loc("close")] = np.nan
    assert analyze_candles("AAAUSDT", bad).reason.startswith("invalid data")
    valid, failed = split_valid_symbols(["BTCUSDT", "INVALID1", "btcusdt", "ETHUSDT"])
    assert valid == ["BTCUSDT", "ETHUSDT"]
    assert [f.symbol for f in failed] == ["INVALID1", "btcusdt"]
    assert all(f.reason.startswith("invalid symbol") for f in failed)


@pytest.mark.tc("TC-ASYNC-011")
def test_batches_are_coarse_and_cover_every_symbol() -> None:
    symbols = [f"S{i:03d}USDT" for i in range(500)]
    batches = batch_symbols(symbols, n_workers=2, max_batch=50)
    assert len(batches) == 10 and sorted(sum(batches, [])) == symbols
    assert [len(b) for b in batch_symbols(symbols[:100], 2)] == [50, 50]
    assert [len(b) for b in batch_symbols(symbols[:7], 2)] == [4, 3]
    assert [len(b) for b in batch_symbols(symbols[:120], 2)] == [40, 40, 40]
    # the first symbols (those with a model) are spread over the batches
    assert [b[0] for b in batch_symbols(symbols[:100], 2)] == symbols[:2]


@pytest.mark.tc("TC-ASYNC-011", "TC-ASYNC-083")
def test_parameters_are_validated_before_a_run() -> None:
    with pytest.raises(ValidationError, match="At most 500 symbols"):
        BulkAnalysisParams(symbols=[f"S{i}USDT" for i in range(501)])
    with pytest.raises(ValidationError, match="at least one symbol"):
        BulkAnalysisParams(symbols=[])
    with pytest.raises(ValidationError, match="must not repeat"):
        BulkAnalysisParams(symbols=["BTCUSDT", "BTCUSDT"])
    with pytest.raises(ValidationError, match="min_confidence must be between 0 and 1"):
        BulkAnalysisParams(symbols=["BTCUSDT"], min_confidence=1.5)
    with pytest.raises(ValidationError, match="timeframe must be one of"):
        BulkAnalysisParams(symbols=["BTCUSDT"], timeframe="2h")


@pytest.mark.tc("TC-ASYNC-011")
def test_summary_sorts_and_filters_by_confidence() -> None:
    outcomes = [analyze_candles(f"A{i}USDT", make_candles(200, seed=i)) for i in range(6)]
    outcomes.append(FailedSymbol(symbol="XUSDT", reason="no data: no candles stored"))
    res = summarize(
        outcomes, timeframe="1h", total_symbols=7, min_confidence=None, batches=1, elapsed_s=0.1
    )
    conf = [r.confidence for r in res.results]
    assert conf == sorted(conf, reverse=True) and res.symbols_analyzed == 6
    cut = conf[2]
    res2 = summarize(
        outcomes, timeframe="1h", total_symbols=7, min_confidence=cut, batches=1, elapsed_s=0.1
    )
    assert all(r.confidence >= cut for r in res2.results)
    assert len(res2.results) + res2.below_min_confidence == 6
    assert [f.symbol for f in res2.failed_symbols] == ["XUSDT"]


@pytest.mark.tc("TC-ASYNC-012")
def test_batch_reads_the_store_and_reports_short_and_missing_data(
    store: Store, mongo_uri: str, mongo_db_name: str
) -> None:
    store.upsert_candles(
        "ETHUSDT", "1h", generate_candles("ETHUSDT", "1h", START, 120), source="synthetic"
    )
    store.upsert_candles(
        "BNBUSDT", "1h", generate_candles("BNBUSDT", "1h", START, 30), source="synthetic"
    )
    stale = generate_candles("SOLUSDT", "1h", START - timedelta(days=60), 150)
    store.upsert_candles("SOLUSDT", "1h", stale, source="synthetic")  # ends weeks earlier
    names = ["ETHUSDT", "SOLUSDT", "BNBUSDT", "NODATAUSDT"]
    many = store.load_candles_many(names, "1h", last_n=100)
    for s in names[:3]:
        pd.testing.assert_frame_equal(many[s], store.load_candles(s, "1h", last_n=100))
    assert len(many["ETHUSDT"]) == len(many["SOLUSDT"]) == 100 and many["NODATAUSDT"].empty
    mongo = MongoDBBlock(uri=mongo_uri, database=mongo_db_name)
    out = run_analysis_batch(["ETHUSDT", "BNBUSDT", "NODATAUSDT"], "1h", 100, mongo, {}, None, None)
    eth, bnb, missing = out
    assert isinstance(eth, SymbolAnalysis)
    stored = store.load_candles("ETHUSDT", "1h", last_n=100)
    assert eth.price == pytest.approx(stored["close"].iloc[-1])
    assert eth.indicators["rsi"] == pytest.approx(rsi(stored["close"].to_numpy(), 14)[-1])
    assert bnb.reason == "too little data: 30 candles, need at least 60"
    assert missing.reason.startswith("no data")


@pytest.mark.tc("TC-ASYNC-011", "TC-ASYNC-012")
def test_bulk_analysis_flow_with_invalid_symbols_and_a_model(
    mongo_block: Store, model_store_block, prefect_server: str
) -> None:
    """TC-ASYNC-012: 10 symbols, 2 invalid -> 8 analysed, 2 failed with reasons, sorted;
    BTCUSDT has a deployed model and gets its signal (source model). Below the Dask
    crossover the flow analyses in its own process: one batch, no cluster."""
    from flows.bulk_analysis import bulk_analysis
    from ml.registry import ModelRegistry

    for s in GOOD:
        mongo_block.upsert_candles(
            s, "1h", generate_candles(s, "1h", START, 300), source="synthetic"
        )
    train = make_candles(1500, seed=11)
    record = deploy_small_model(
        mongo_block,
        Path(model_store_block.directory),
        model_store_block.get_key(),
        train,
        symbol="BTCUSDT",
    )
    symbols = GOOD[:3] + ["INVALID1"] + GOOD[3:6] + ["INVALID2"] + GOOD[6:]

    result = bulk_analysis(BulkAnalysisParams(symbols=symbols))

    assert result.status == "success" and result.total_symbols == 10
    assert result.symbols_analyzed == 8 and len(result.results) == 8
    assert sorted(f.symbol for f in result.failed_symbols) == ["INVALID1", "INVALID2"]
    assert all(f.reason.startswith("invalid symbol") for f in result.failed_symbols)
    assert {r.symbol for r in result.results} == set(GOOD)
    conf = [r.confidence for r in result.results]
    assert conf == sorted(conf, reverse=True)
    assert result.batches == 1
    by_symbol = {r.symbol: r for r in result.results}
    btc = by_symbol["BTCUSDT"]
    assert btc.source == "model" and btc.model_id == record.model_id
    registry = ModelRegistry(
        mongo_block, Path(model_store_block.directory), model_store_block.get_key()
    )
    candles = mongo_block.load_candles("BTCUSDT", "1h", last_n=300)
    p = registry.load(record).predict_up_probability(candles)
    assert btc.up_probability == pytest.approx(p, abs=1e-5)
    assert btc.confidence == pytest.approx(abs(2 * p - 1), abs=1e-5)
    assert all(
        by_symbol[s].source == "indicators" and by_symbol[s].model_id is None for s in GOOD[1:]
    )
    # the model's signal is in the prediction ledger (indicator signals carry no P(up))
    (entry,) = mongo_block.ledger.entries_find({"task_id": result.task_id})
    assert (entry["kind"], entry["symbol"], entry["signal"]) == ("signal", "BTCUSDT", btc.signal)
    assert entry["up_probability"] == btc.up_probability and entry["scored"] is False
    assert (entry["model_id"], entry["model_version"]) == (record.model_id, record.version)
    assert entry["target_time"] == btc.timestamp + timedelta(hours=record.horizon_bars)
    assert entry["origin_price"] == btc.price

    async def artifacts():  # progress artifact reached 100%
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[result.task_id])
                )
            )

    import asyncio

    arts = asyncio.run(artifacts())
    progress = [a for a in arts if a.type == "progress"]
    assert progress and progress[0].data == 100.0
    assert progress[0].description == "Analyzed 10/10 symbols"


@pytest.mark.tc("TC-ASYNC-011")
def test_dask_only_on_a_long_lived_cluster_and_above_the_crossover() -> None:
    assert not use_dask(10_000, None)  # no cluster is ever started per run
    assert not use_dask(DASK_MIN_SYMBOLS - 1, "tcp://127.0.0.1:8786")
    assert use_dask(DASK_MIN_SYMBOLS, "tcp://127.0.0.1:8786")


@pytest.mark.tc("TC-ASYNC-011", "TC-ASYNC-012")
def test_dask_path_gives_the_in_process_signals(
    store: Store, mongo_uri: str, mongo_db_name: str
) -> None:
    from distributed import LocalCluster

    names = GOOD[:4] + ["NODATAUSDT"]
    for s in GOOD[:4]:
        store.upsert_candles(s, "1h", generate_candles(s, "1h", START, 200), source="synthetic")
    frames = store.load_candles_many(names, "1h", last_n=200)
    local = analyze_frames(names, frames, store, {}, None, None)
    mongo = MongoDBBlock(uri=mongo_uri, database=mongo_db_name)
    seen: list[int] = []
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        remote = analyze_on_dask(
            cluster.scheduler_address,
            batch_symbols(names, 2),
            frames,
            mongo,
            {},
            None,
            None,
            lambda batch: seen.append(len(batch)),
        )
    assert sorted(seen) == [2, 3]
    by_symbol = {o.symbol: o for o in remote}
    assert [by_symbol[o.symbol] for o in local] == local
    assert by_symbol["NODATAUSDT"].reason.startswith("no data")
