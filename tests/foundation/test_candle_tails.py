"""candle_tails: the batched candle read of bulk analysis served from per-series tails,
against a real nx-27017 store. Every frame is compared with a plain ``load_candles`` read."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from core.market import bar_length
from integrations.market_data.synthetic import generate_candles
from integrations.store import C, Store
from integrations.store.candles import frame_to_docs
from integrations.store.tails import DIRTY, TAIL_BARS, VALID, mark_dirty

pytestmark = pytest.mark.tc("TC-ASYNC-011")

START = datetime(2026, 3, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def _put(store: Store, symbol: str, bars: int, start: datetime = START) -> pd.DataFrame:
    frame = generate_candles(symbol, "1h", start, bars)
    store.upsert_candles(symbol, "1h", frame, source="synthetic")
    return frame


def _same_as_single_reads(store: Store, frames: dict[str, pd.DataFrame], last_n: int) -> None:
    for s, got in frames.items():
        pd.testing.assert_frame_equal(got, store.load_candles(s, "1h", last_n=last_n), obj=s)


def _tail(store: Store, symbol: str) -> dict:
    docs = list(store.col(C.CANDLE_TAILS).find({"symbol": symbol, "timeframe": "1h"}, {"_id": 0}))
    assert len(docs) == 1, docs
    return docs[0]


def test_batched_read_is_served_from_tails_and_equals_single_reads(store: Store) -> None:
    _put(store, "ETHUSDT", 400)
    _put(store, "SOLUSDT", 350, START - timedelta(days=40))  # ends weeks before the others
    older = generate_candles("BTCUSDT", "1h", START, 500)
    store.upsert_candles("BTCUSDT", "1h", older.iloc[:200], source="csv:btc.csv")
    store.upsert_candles("BTCUSDT", "1h", older.iloc[200:], source="binance")
    names = ["ETHUSDT", "SOLUSDT", "BTCUSDT"]
    assert all(_tail(store, s)["state"] == VALID for s in names)
    assert _tail(store, "BTCUSDT")["source"] == [["csv:btc.csv", 200], ["binance", 300]]

    for last_n in (300, 1, 450):
        batch = store.market.load_candles_batch([*names, "NODATAUSDT"], "1h", last_n=last_n)
        assert batch.from_tails == tuple(names) and batch.from_candles == ()
        assert batch.frames["NODATAUSDT"].empty
        _same_as_single_reads(store, {s: batch.frames[s] for s in names}, last_n)
    assert set(batch.frames["BTCUSDT"]["source"]) == {"csv:btc.csv", "binance"}

    # the same read without tails (today's path) gives the same frames
    tails = store.market.load_candles_batch(names, "1h", last_n=300)
    store.col(C.CANDLE_TAILS).delete_many({})
    plain = store.market.load_candles_batch(names, "1h", last_n=300)
    assert plain.from_tails == () and plain.from_candles == tuple(names)
    for s in names:
        pd.testing.assert_frame_equal(tails.frames[s], plain.frames[s], obj=s)
    assert store.load_candles_many(names, "1h", last_n=300).keys() == set(names)


def test_external_writes_to_market_data_make_the_tail_unused(store: Store) -> None:
    """The bot's Rust engine writes market_data directly: a new bar, a removed bar and a
    changed close anywhere in the series are seen, never the stale tail."""
    for s in ("AUSDT", "BUSDT", "CUSDT", "DUSDT"):
        _put(store, s, 400)
    market = store.col(C.MARKET_DATA)
    newer = generate_candles("AUSDT", "1h", START + 400 * HOUR, 1)
    market.insert_one(frame_to_docs("AUSDT", "1h", newer, bar_length("1h"), "binance")[0])
    market.delete_one({"symbol": "BUSDT", "timeframe": "1h", "open_time": START + 350 * HOUR})
    old_bar = {"symbol": "CUSDT", "timeframe": "1h", "open_time": START + 150 * HOUR}
    market.update_one(old_bar, {"$set": {"close_price": 12345.5}})  # inside the last 300
    first = {"symbol": "DUSDT", "timeframe": "1h", "open_time": START}
    market.update_one(first, {"$set": {"volume": 777.25}})  # outside the last 300

    batch = store.market.load_candles_batch(["AUSDT", "BUSDT", "CUSDT", "DUSDT"], "1h", last_n=300)
    assert batch.from_tails == () and len(batch.from_candles) == 4
    _same_as_single_reads(store, batch.frames, 300)
    assert batch.frames["AUSDT"].index[-1] == START + 400 * HOUR
    assert batch.frames["AUSDT"]["source"].iloc[-1] == "binance"
    assert START + 350 * HOUR not in batch.frames["BUSDT"].index
    assert batch.frames["CUSDT"].loc[START + 150 * HOUR, "close"] == 12345.5

    store.upsert_candles("AUSDT", "1h", newer, source="binance")  # a platform write rebuilds
    again = store.market.load_candles_batch(["AUSDT", "BUSDT"], "1h", last_n=300)
    assert again.from_tails == ("AUSDT",) and again.from_candles == ("BUSDT",)
    _same_as_single_reads(store, again.frames, 300)


def test_a_dirty_tail_is_not_used_until_a_write_rebuilds_it(store: Store) -> None:
    """A crash between marking the tail dirty and rebuilding it: here the write changed a
    high price only, which the fingerprint does not see; the dirty state alone protects."""
    for s in ("ETHUSDT", "XRPUSDT"):
        _put(store, s, 300)
    tails = store.col(C.CANDLE_TAILS)
    mark_dirty(tails, "ETHUSDT", "1h", "crashed-writer", "candles being written")
    bar = {"symbol": "ETHUSDT", "timeframe": "1h", "open_time": START + 299 * HOUR}
    store.col(C.MARKET_DATA).update_one(bar, {"$set": {"high_price": 999999.0}})
    tails.update_one({"symbol": "XRPUSDT", "timeframe": "1h"}, {"$set": {"state": DIRTY}})
    assert _tail(store, "XRPUSDT")["n"] == 300  # set by hand: columns kept, state dirty

    batch = store.market.load_candles_batch(["ETHUSDT", "XRPUSDT"], "1h", last_n=200)
    assert batch.from_tails == () and batch.from_candles == ("ETHUSDT", "XRPUSDT")
    _same_as_single_reads(store, batch.frames, 200)
    assert batch.frames["ETHUSDT"]["high"].iloc[-1] == 999999.0

    assert store.market.rebuild_candle_tails(["ETHUSDT", "XRPUSDT"], "1h") == {
        "ETHUSDT": VALID,
        "XRPUSDT": VALID,
    }
    rebuilt = store.market.load_candles_batch(["ETHUSDT", "XRPUSDT"], "1h", last_n=200)
    assert rebuilt.from_tails == ("ETHUSDT", "XRPUSDT")
    _same_as_single_reads(store, rebuilt.frames, 200)


def test_last_n_beyond_the_tail_falls_back_and_short_series_use_the_tail(store: Store) -> None:
    _put(store, "LONGUSDT", 1500)
    _put(store, "SHORTUSDT", 400)
    assert _tail(store, "LONGUSDT")["n"] == TAIL_BARS and _tail(store, "LONGUSDT")["bars"] == 1500
    assert _tail(store, "SHORTUSDT")["n"] == 400

    beyond = store.market.load_candles_batch(["LONGUSDT", "SHORTUSDT"], "1h", last_n=1200)
    assert beyond.from_tails == ("SHORTUSDT",) and beyond.from_candles == ("LONGUSDT",)
    assert len(beyond.frames["LONGUSDT"]) == 1200 and len(beyond.frames["SHORTUSDT"]) == 400
    _same_as_single_reads(store, beyond.frames, 1200)

    within = store.market.load_candles_batch(["LONGUSDT", "SHORTUSDT"], "1h", last_n=TAIL_BARS)
    assert within.from_tails == ("LONGUSDT", "SHORTUSDT")
    _same_as_single_reads(store, within.frames, TAIL_BARS)


def test_repeating_an_upsert_leaves_one_valid_tail_with_the_same_content(store: Store) -> None:
    info = store.col(C.CANDLE_TAILS).index_information().values()
    assert any(
        [k for k, _ in v["key"]] == ["symbol", "timeframe"] and v.get("unique") for v in info
    )
    frame = _put(store, "ADAUSDT", 250)
    first = _tail(store, "ADAUSDT")
    store.upsert_candles("ADAUSDT", "1h", frame, source="synthetic")
    second = _tail(store, "ADAUSDT")  # exactly one document
    assert second["state"] == VALID and second["writer"] != first["writer"]
    volatile = ("writer", "built_at")
    assert {k: v for k, v in second.items() if k not in volatile} == {
        k: v for k, v in first.items() if k not in volatile
    }
    assert second["bars"] == 250 and second["last_open_time"] == frame.index[-1]
    batch = store.market.load_candles_batch(["ADAUSDT"], "1h", last_n=100)
    assert batch.from_tails == ("ADAUSDT",)
    _same_as_single_reads(store, batch.frames, 100)


def test_tails_built_after_a_bulk_insert_and_irregular_documents(store: Store) -> None:
    """The bench seeds with one bulk insert and builds the tails with the write path's
    rebuild; a document the tail cannot encode exactly (no trades_count) leaves it dirty."""
    docs = []
    for s in ("AAAUSDT", "BBBUSDT"):
        docs += frame_to_docs(s, "1h", generate_candles(s, "1h", START, 300), HOUR, "synthetic")
    del docs[-1]["trades_count"]  # BBBUSDT's newest bar, as a foreign writer might store it
    store.col(C.MARKET_DATA).insert_many(docs)
    names = ["AAAUSDT", "BBBUSDT", "NODATAUSDT"]
    before = store.market.load_candles_batch(names, "1h", last_n=300)
    assert before.from_tails == () and before.from_candles == ("AAAUSDT", "BBBUSDT")

    states = store.market.rebuild_candle_tails(names, "1h")
    assert states == {"AAAUSDT": VALID, "BBBUSDT": DIRTY, "NODATAUSDT": DIRTY}
    assert "trades_count" in _tail(store, "BBBUSDT")["reason"]
    after = store.market.load_candles_batch(names, "1h", last_n=300)
    assert after.from_tails == ("AAAUSDT",) and after.from_candles == ("BBBUSDT",)
    for s in ("AAAUSDT", "BBBUSDT"):
        pd.testing.assert_frame_equal(after.frames[s], before.frames[s], obj=s)
    pd.testing.assert_frame_equal(
        after.frames["AAAUSDT"], store.load_candles("AAAUSDT", "1h", last_n=300)
    )
