"""Market data: CSV imports (real and corrupt), quality checks, resampling, the synthetic
generator, the ingest flow and the demo loader (the Binance client: test_binance_client.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer

from core.schemas.market_data import IngestParameters
from core.settings import load_settings
from integrations.embedded_mongo import free_port
from integrations.market_data.binance import BinanceClient
from integrations.market_data.csv_source import read_candles_csv
from integrations.market_data.pipeline import import_csv, load_demo_data
from integrations.market_data.quality import check_candles
from integrations.market_data.resample import resample_candles
from integrations.market_data.synthetic import generate_candles
from integrations.store import C, Store
from tests.foundation.binance_peer import klines_handler

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


@pytest.mark.tc("none")
def test_import_real_coinbase_hourly_csv_is_clean_and_idempotent(
    store: Store, shared_data_dir: Path
) -> None:
    path = str(shared_data_dir / "Coinbase_BTCUSD_1h.csv")
    [first] = import_csv(store, path)
    assert (first.symbol, first.timeframe, first.source) == (
        "BTCUSD",
        "1h",
        "csv:Coinbase_BTCUSD_1h.csv",
    )
    q = first.quality
    assert (q.rows_in, q.rows_kept, q.duplicates, q.gaps, q.missing_bars) == (20111, 20111, 0, 0, 0)
    assert first.inserted == 20111 and first.rejected == 0
    assert (q.first, q.last) == (
        datetime(2017, 7, 1, 11, tzinfo=UTC),
        datetime(2019, 10, 17, 9, tzinfo=UTC),
    )
    [again] = import_csv(store, path)
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 20111)
    assert (
        store.col(C.MARKET_DATA).count_documents({"symbol": "BTCUSD", "timeframe": "1h"}) == 20111
    )
    newest = store.load_candles("BTCUSD", "1h", last_n=1)
    # first data row of the file: 2019-10-17 09-AM,BTCUSD,8051,8056.83,8021.23,8035.88,61.25,492394.56
    assert newest[["open", "high", "low", "close", "volume", "quote_volume"]].iloc[0].tolist() == [
        8051.0,
        8056.83,
        8021.23,
        8035.88,
        61.25,
        492394.56,
    ]


@pytest.mark.tc("TC-ASYNC-027")
def test_corrupt_csv_rows_rejected_and_rest_stored(store: Store, tmp_path: Path) -> None:
    lines = [
        "Timestamps are UTC timezone,https://www.CryptoDataDownload.com",
        "date,symbol,open,high,low,close,volume_btc,volume",
        "2024-01-01 10-AM,ETHUSD,100,101,99,100.5,1,100",
        "2024-01-01 09-AM,ETHUSD,100,101,99,100.5,1,100",  # duplicate hour (older copy)
        "2024-01-01 09-AM,ETHUSD,100,101,99,100.5,1,100",
        "2024-01-01 08-AM,ETHUSD,100,99,101,100,1,100",  # high < low
        "2024-01-01 07-AM,ETHUSD,-5,101,99,100,1,100",  # negative price
        "2024-01-01 06-AM,ETHUSD,NaN,101,99,100,1,100",  # NaN
        "2024-01-01 05-AM,ETHUSD,100,101,99,100.5,1,100",
        "2024-01-01 04-AM,ETHUSD,100,101,99,100.5,1,100",
        "not-a-date,ETHUSD,100,101,99,100.5,1,100",
    ]
    path = tmp_path / "corrupt.csv"
    path.write_text("\n".join(lines) + "\n")
    [res] = import_csv(store, str(path))
    q = res.quality
    assert q.rejected == {
        "bad_timestamp": 1,
        "nan_or_inf": 1,
        "non_positive_price": 1,
        "high_below_low": 1,
        "duplicate_bar": 1,
    }
    assert res.rejected == 5 and res.inserted == 4 and q.rows_in == 9
    reasons = {e.reason: e for e in q.examples}
    assert reasons["non_positive_price"].values["open"] == -5.0
    assert reasons["high_below_low"].open_time == datetime(2024, 1, 1, 8, tzinfo=UTC)
    assert (q.gaps, q.missing_bars) == (1, 3)  # 06, 07, 08 rejected -> a hole of 3 bars
    stored = store.load_candles("ETHUSD", "1h")
    assert [t.hour for t in stored.index] == [4, 5, 9, 10]


@pytest.mark.tc("none")
def test_plain_ohlcv_csv_with_epoch_ms(tmp_path: Path) -> None:
    t = int(T0.timestamp() * 1000)
    rows = ["timestamp,open,high,low,close,volume"] + [
        f"{t + i * 900_000},{10 + i},{11 + i},{9 + i},{10.5 + i},{i}" for i in range(8)
    ]
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(rows))
    data = read_candles_csv(path)
    assert (data.format, data.timeframe, data.symbol) == ("ohlcv", "15m", None)
    clean, report = check_candles(data.frame, "15m")
    assert report.rows_kept == 8 and clean.index[0] == pd.Timestamp(T0)


@pytest.mark.tc("none")
def test_resample_matches_hand_computation() -> None:
    idx = pd.date_range(
        "2024-01-01 01:00", periods=47, freq="h", tz="UTC"
    )  # 01:00 day1 .. 23:00 day2
    n = np.arange(47, dtype=float)
    frame = pd.DataFrame(
        {"open": 100 + n, "high": 110 + n, "low": 90 - n, "close": 101 + n, "volume": 1 + n},
        index=idx,
    )
    four = resample_candles(frame, "1h", "4h")
    # 00:00 bucket lacks its 00:00 bar -> dropped; buckets 04:00 day1 .. 20:00 day2 kept
    assert four.index[0] == pd.Timestamp("2024-01-01 04:00", tz="UTC") and len(four) == 11
    first = four.iloc[0]  # rows 3..6 (04:00..07:00)
    assert first.tolist() == [103.0, 116.0, 84.0, 107.0, 4 + 5 + 6 + 7]
    last = four.iloc[-1]  # 20:00..23:00 of day 2: rows 43..46
    assert last.tolist() == [143.0, 156.0, 44.0, 147.0, 44 + 45 + 46 + 47]
    daily = resample_candles(frame, "1h", "1d")
    assert list(daily.index) == [pd.Timestamp("2024-01-02", tz="UTC")]  # day 1 incomplete
    day2 = daily.iloc[0]  # rows 23..46
    assert day2.tolist() == [123.0, 156.0, 44.0, 147.0, float(sum(range(24, 48)))]


@pytest.mark.tc("none")
def test_resampled_real_hours_match_the_real_daily_file(shared_data_dir: Path) -> None:
    hourly = read_candles_csv(shared_data_dir / "Coinbase_BTCUSD_1h.csv")
    daily = read_candles_csv(shared_data_dir / "Coinbase_BTCUSD_d.csv")
    h, _ = check_candles(hourly.frame, "1h")
    d, d_report = check_candles(daily.frame, "1d")
    assert d_report.gaps == 1 and d_report.missing_bars == 12  # the daily file has a hole
    ours = resample_candles(h, "1h", "1d")
    both = ours.join(d, how="inner", lsuffix="_ours")
    assert len(both) > 800
    same_close = np.isclose(both["close_ours"], both["close"]).mean()
    assert same_close > 0.9  # same exchange, same days: the closes agree


@pytest.mark.tc("none")
def test_synthetic_generator_is_deterministic_per_seed() -> None:
    a = generate_candles("BTCUSDT", "1h", T0, 24 * 60, seed=7)
    b = generate_candles("BTCUSDT", "1h", T0, 24 * 60, seed=7)
    c = generate_candles("BTCUSDT", "1h", T0, 24 * 60, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["close"], c["close"])
    assert not np.allclose(
        a["close"], generate_candles("ETHUSDT", "1h", T0, 24 * 60, seed=7)["close"] * 15
    )
    assert a["regime"].nunique() >= 3
    _, report = check_candles(a, "1h")
    assert report.rows_kept == len(a) and report.gaps == 0
    # a longer series extends a shorter one bar for bar
    longer = generate_candles("BTCUSDT", "1h", T0, 24 * 200, seed=7)
    pd.testing.assert_frame_equal(longer.iloc[: len(a)], a)


@pytest.mark.tc("none")
def test_ingest_flow_synthetic_then_binance(
    mongo_block: Store, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ingest_market_data import ingest_market_data

    params = IngestParameters(
        source="synthetic",
        symbols=["SOLUSDT", "ETHUSDT"],
        timeframe="1h",
        start=T0,
        end=T0 + timedelta(days=3),
        resample_to=["4h", "1d"],
    )
    result = ingest_market_data(params)
    counts = {(r.symbol, r.timeframe): (r.inserted, r.source) for r in result.results}
    assert counts[("SOLUSDT", "1h")] == (72, "synthetic")
    assert counts[("SOLUSDT", "4h")] == (18, "synthetic") and counts[("ETHUSDT", "1d")][0] == 3
    again = ingest_market_data(params)
    assert all(r.inserted == 0 and r.unchanged > 0 for r in again.results)
    assert mongo_block.candle_summary()[0]["sources"] == ["synthetic"]

    httpserver.expect_request("/api/v3/klines").respond_with_handler(klines_handler)
    monkeypatch.setenv("BOTAI_BINANCE_BASE_URL", httpserver.url_for("/").rstrip("/"))
    got = ingest_market_data(
        IngestParameters(
            source="binance", symbols=["BTCUSDT"], start=T0, end=T0 + timedelta(hours=1500)
        )
    )
    [btc] = got.results
    assert (btc.inserted, btc.rejected, btc.source) == (1500, 0, "binance")
    assert len(httpserver.log) == 2


@pytest.mark.tc("TC-ASYNC-027")
def test_ingest_flow_csv_source_reports_rejections(
    mongo_block: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.ingest_market_data import ingest_market_data

    monkeypatch.setenv("BOTAI_DATA_DIRS", str(tmp_path))  # a CSV import reads data folders only

    rows = ["timestamp,open,high,low,close,volume"] + [
        f"2024-01-01T{h:02d}:00:00Z,10,11,9,10.5,{h}" for h in range(8)
    ]
    rows[3] = "2024-01-01T02:00:00Z,10,11,9,inf,2"
    path = tmp_path / "plain.csv"
    path.write_text("\n".join(rows))
    result = ingest_market_data(
        IngestParameters(source="csv", symbols=["XRPUSDT"], csv_path=str(path), resample_to=["4h"])
    )
    one, four = result.results
    assert (one.symbol, one.inserted, one.rejected) == ("XRPUSDT", 7, 1)
    assert one.quality.rejected == {"nan_or_inf": 1} and one.quality.missing_bars == 1
    assert (four.timeframe, four.inserted) == ("4h", 1)  # 00:00 lacks 02:00 and is at the edge


@pytest.mark.tc("TC-ASYNC-083")
def test_ingest_parameters_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="Invalid trading symbol"):
        IngestParameters(symbols=["btc-usd"])
    with pytest.raises(ValueError, match="csv_path is required"):
        IngestParameters(source="csv")
    with pytest.raises(ValueError, match="coarser"):
        IngestParameters(timeframe="1d", resample_to=["4h"])


@pytest.mark.tc("none")
def test_demo_data_falls_back_to_synthetic_and_imports_real_csv(
    store: Store, shared_data_dir: Path, tmp_path: Path
) -> None:
    # the newest 300 hours of the real file, so the test stays fast (the full import is tested above)
    real = (shared_data_dir / "Coinbase_BTCUSD_1h.csv").read_text().splitlines()
    (tmp_path / "Coinbase_BTCUSD_1h.csv").write_text("\n".join(real[:302]) + "\n")
    dead = f"http://127.0.0.1:{free_port()}"
    settings = load_settings(binance_base_url=dead, demo_probe_timeout_s=1, data_dir=tmp_path)
    report = load_demo_data(store, settings, now=NOW)
    assert report.source == "synthetic" and "not reachable" in report.reason
    assert report.symbols == ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT"] and report.days >= 60
    assert all(r.inserted == 24 * report.days and r.source == "synthetic" for r in report.results)
    assert report.real_csv is not None and report.real_csv.symbol == "BTCUSD"
    assert report.real_csv.quality.rows_kept == 300 and report.real_csv.quality.gaps == 0
    assert "synthetic" in report.summary()
    assert store.candle_symbols("1h") == ["BNBUSDT", "BTCUSD", "BTCUSDT", "ETHUSDT", "SOLUSDT"]
    again = load_demo_data(store, settings, now=NOW + timedelta(hours=5))  # later re-run
    assert all(r.updated == 0 and r.inserted == 5 for r in again.results)


@pytest.mark.tc("none")
def test_demo_data_from_binance_when_reachable(
    store: Store, httpserver: HTTPServer, tmp_path: Path
) -> None:
    httpserver.expect_request("/api/v3/ping").respond_with_json({})
    httpserver.expect_request("/api/v3/klines").respond_with_handler(klines_handler)
    settings = load_settings(
        binance_base_url=httpserver.url_for("/").rstrip("/"), data_dir=tmp_path
    )
    client = BinanceClient(settings.binance_base_url, now=lambda: NOW)
    report = load_demo_data(store, settings, client=client, now=NOW, days=60)
    assert report.source == "binance" and report.real_csv is None
    assert [r.inserted for r in report.results] == [1440] * 4
    assert store.candle_summary()[0]["sources"] == ["binance"]
