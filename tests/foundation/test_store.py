"""The store against a real nx-27017 process (not mongomock)."""

from __future__ import annotations

import pandas as pd
import pytest

from integrations.store import C, Store

pytestmark = pytest.mark.tc("none")


def _candles(n: int, start: str = "2024-01-01") -> pd.DataFrame:
    idx = pd.date_range(start, periods=n, freq="h", tz="UTC")
    close = 100 + pd.Series(range(n), index=idx, dtype=float)
    return pd.DataFrame(
        {"open": close - 0.5, "high": close + 1, "low": close - 1, "close": close, "volume": 10.0},
        index=idx,
    )


def test_ping_and_indexes(store: Store) -> None:
    assert store.ping() >= 0
    info = store.col(C.MARKET_DATA).index_information()
    unique = [v for v in info.values() if v.get("unique")]
    assert any([k for k, _ in v["key"]] == ["symbol", "timeframe", "open_time"] for v in unique)


def test_upsert_is_idempotent_and_updates_changed_bars(store: Store) -> None:
    frame = _candles(50)
    first = store.upsert_candles("BTCUSDT", "1h", frame, source="synthetic")
    assert (first.inserted, first.updated, first.unchanged) == (50, 0, 0)
    again = store.upsert_candles("BTCUSDT", "1h", frame, source="synthetic")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 50)
    changed = frame.copy()
    changed.iloc[-1, changed.columns.get_loc("close")] = 999.0
    extended = pd.concat([changed, _candles(5, "2024-01-03 02:00")])
    rep = store.upsert_candles("BTCUSDT", "1h", extended, source="synthetic")
    assert (rep.inserted, rep.updated, rep.unchanged) == (5, 1, 49)
    assert store.col(C.MARKET_DATA).count_documents({"symbol": "BTCUSDT"}) == 55


def test_load_candles_round_trip_schema(store: Store) -> None:
    frame = _candles(30)
    store.upsert_candles("ETHUSDT", "1h", frame, source="synthetic")
    doc = store.col(C.MARKET_DATA).find_one({"symbol": "ETHUSDT"}, {"_id": 0})
    assert set(doc) == {
        "symbol",
        "timeframe",
        "open_time",
        "close_time",
        "open_price",
        "high_price",
        "low_price",
        "close_price",
        "volume",
        "quote_volume",
        "trades_count",
        "source",
    }
    loaded = store.load_candles("ETHUSDT", "1h")
    assert len(loaded) == 30
    assert str(loaded.index.tz) == "UTC"
    assert loaded["close"].tolist() == frame["close"].tolist()
    last = store.load_candles("ETHUSDT", "1h", last_n=7)
    assert len(last) == 7 and last.index[-1] == frame.index[-1]
    window = store.load_candles("ETHUSDT", "1h", start=frame.index[10], end=frame.index[19])
    assert len(window) == 10
    assert store.load_candles("NOPEUSDT", "1h").empty
    summary = store.candle_summary()
    assert summary == [
        {
            "symbol": "ETHUSDT",
            "timeframe": "1h",
            "bars": 30,
            "first": frame.index[0].to_pydatetime(),
            "last": frame.index[-1].to_pydatetime(),
            "sources": ["synthetic"],
        }
    ]
