"""Forward tracking: served forecasts in the ledger, scored on unseen hours; the decay rule;
a confidence that is a calibrated probability (TC-ASYNC-013, 020)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from integrations.store import C, Store
from integrations.store.ledger import MARK_CHUNK
from ml.decay import DecayRule, judge
from ml.scoring import calibration_table, live_figures, score_entry
from tasks.scoring import score_due_entries
from tests.ml.helpers import make_candles
from tests.ml.ledger_helpers import serve_forecasts, serve_signals, trained_model

log = logging.getLogger(__name__)
TRAIN_BARS = 2500
#: unseen hours: 400 replayed (+ the feature window) before the first forecast, then a
#: forecast every 3 hours for 1,000 hours
REPLAY_BARS = 400
SERVE_FROM = TRAIN_BARS + 500


def _served(store: Store, model_dir: Path, key: bytes, momentum: float, symbol: str) -> list:
    """A tiny GRU trained on generated hours, then forecasts every 3 unseen hours and a
    signal every unseen hour, all scored. Returns the model's scored entries."""
    candles = make_candles(SERVE_FROM + 1003, momentum=momentum, seed=11)
    model = trained_model(store, model_dir, key, candles.iloc[:TRAIN_BARS], symbol)
    origins = np.arange(SERVE_FROM, len(candles) - 3, 3)
    serve_forecasts(store, model, candles, origins, 3, f"run-{symbol}", REPLAY_BARS)
    signals = serve_signals(store, model, candles, TRAIN_BARS, f"bulk-{symbol}")
    store.upsert_candles(symbol, "1h", candles, source="generated")
    counts = score_due_entries.fn(store, datetime.now(UTC), 0.1, 100_000)
    # every entry is due; the newest signal's outcome candle is not stored: it waits
    assert counts["scored"] == 3 * len(origins) + signals - 1
    mine = {"model_id": model.record.model_id}
    (waiting,) = store.ledger.entries_find({**mine, "scored": False})
    assert waiting["kind"] == "signal" and waiting["target_time"] > candles.index[-1]
    return store.ledger.entries_find({**mine, "scored": True})


@pytest.mark.tc("TC-ASYNC-013", "TC-ASYNC-020")
def test_confidence_is_calibrated_and_the_decay_rule_tells_signal_from_coin_flip(
    store: Store, tmp_path: Path
) -> None:
    key = bytes(range(32))
    planted = _served(store, tmp_path, key, 0.6, "PLANTUSDT")
    coin = _served(store, tmp_path, key, 0.0, "COINUSDT")
    for rows, edge in ((planted, True), (coin, False)):
        figures = live_figures(rows)
        hour1 = next(f for f in figures if f.kind == "price" and f.hour == 1)
        assert hour1.scored > 300 and hour1.hit_rate_se is not None
        # the forecasts' stated P(direction) matches the realised hit rate on unseen hours
        gap = abs(hour1.mean_confidence - hour1.hit_rate)
        assert gap < 2.5 * hour1.hit_rate_se, hour1
        signals = next(f for f in figures if f.kind == "signal")
        assert signals.scored == 1502 and signals.brier_se is not None
        log.info(
            "%s hour 1: confidence %.3f, hit rate %.3f +- %.3f (%d); signals hit %.3f +- %.3f, "
            "Brier %.4f +- %.4f vs %.4f",
            "planted" if edge else "random walk",
            hour1.mean_confidence,
            hour1.hit_rate,
            hour1.hit_rate_se,
            hour1.scored,
            signals.hit_rate,
            signals.hit_rate_se,
            signals.brier,
            signals.brier_se,
            signals.brier_baseline,
        )
        if edge:
            assert hour1.hit_rate - 3 * hour1.hit_rate_se > hour1.majority_rate, hour1
            assert hour1.mean_confidence > 0.55
            assert signals.brier + 3 * signals.brier_se < signals.brier_baseline, signals
        else:
            assert abs(hour1.hit_rate - 0.5) < 3 * hour1.hit_rate_se
            assert hour1.mean_confidence < 0.56
            # no skill: its raw scores (bulk-analysis signals are not calibrated) do no
            # better than always forecasting the up share
            assert signals.brier > signals.brier_baseline - 2 * signals.brier_se, signals
        table = calibration_table([r for r in rows if r["kind"] == "price" and r["hour"] == 1])
        assert sum(b["n"] for b in table) == hour1.scored
    # the decay rule on the same live record: the planted signal keeps its place, the coin
    # flip is flagged once the window is full (and not before)
    now = datetime.now(UTC)
    rule = DecayRule(window_entries=1500, min_edge=0.06, min_coverage_pairs=100, coverage_days=90)
    keep = judge("planted", "PLANTUSDT", planted, now, rule)
    flag = judge("coin", "COINUSDT", coin, now, rule)
    assert not keep.decayed and keep.direction_scored == 1500, keep
    assert flag.decayed and "no edge" in flag.reasons[0], flag
    # the intervals hold: the coverage is within its noise of the 0.75-0.85 band
    assert 0.75 - 1.96 * flag.coverage_se <= flag.coverage <= 0.85 + 1.96 * flag.coverage_se
    assert len(flag.reasons) == 1, flag
    early = judge("coin", "COINUSDT", coin[:1200], now, rule)
    assert not early.decayed and "direction not judged" in early.note
    # intervals that cover too little fire the coverage test
    narrow = [
        {**r, "inside": False} if r.get("inside") and i % 4 == 0 else r
        for i, r in enumerate(planted)
    ]
    narrowed = judge("planted", "PLANTUSDT", narrow, now, rule)
    assert narrowed.decayed and "coverage" in narrowed.reasons[0] and narrowed.coverage < 0.75


def _coverage_entries(insides_per_day: list[list[bool]], now: datetime) -> list[dict]:
    """Scored price entries, one origin day per list, with the given ``inside`` outcomes."""
    rows = []
    for d, insides in enumerate(insides_per_day):
        origin = now - timedelta(days=len(insides_per_day) - d)
        for h, inside in enumerate(insides):
            rows.append(
                {
                    "scored": True,
                    "kind": "price",
                    "hour": h + 1,
                    "hit": None,
                    "inside": inside,
                    "origin_time": origin,
                    "target_time": origin + timedelta(hours=h + 1),
                }
            )
    return rows


@pytest.mark.tc("TC-ASYNC-020")
def test_the_coverage_test_fires_beyond_its_noise_and_not_within_it() -> None:
    now = datetime.now(UTC)
    rule = DecayRule(min_coverage_pairs=100, coverage_days=30)
    # 14 days, 24 intervals each: days cover 19-24 of 24 (0.866 overall), as days share hours
    per_day = [19, 24, 20, 23, 21, 22, 20, 23, 19, 22, 21, 20, 18, 19]
    wandering = _coverage_entries([[i < k for i in range(24)] for k in per_day], now)
    verdict = judge("m", "BTCUSDT", wandering, now, rule)
    assert verdict.coverage > 0.85 and verdict.coverage - 1.96 * verdict.coverage_se < 0.85
    assert not verdict.decayed, verdict
    # the same mean with no day-to-day wandering is known precisely: 0.9 of every day's hours
    steady = _coverage_entries([[i % 10 != 0 for i in range(20)] for _ in range(14)], now)
    tight = judge("m", "BTCUSDT", steady, now, rule)
    assert tight.coverage == pytest.approx(0.9) and tight.decayed, tight
    assert "coverage 0.900" in tight.reasons[0] and "outside 0.75-0.85" in tight.reasons[0]
    # intervals that cover far too little fire whatever the noise
    narrow = _coverage_entries([[i < 12 for i in range(24)] for _ in per_day], now)
    assert judge("m", "BTCUSDT", narrow, now, rule).decayed


def _price_entry(i: int, origin: datetime, target: datetime) -> dict:
    return {
        "entry_id": f"run-batch:BATCHUSDT:price:{i}",
        "task_id": "run-batch",
        "kind": "price",
        "model_id": "m-batch",
        "symbol": "BATCHUSDT",
        "timeframe": "1h",
        "created_at": origin,
        "origin_time": origin,
        "origin_price": 100.0,
        "hour": 1,
        "target_time": target,
        "predicted_price": 100.5,
        "lower": 99.5,
        "upper": 101.5,
        "confidence": 0.6,
        "up_probability": 0.6,
        "scored": False,
    }


@pytest.mark.tc("TC-ASYNC-013", "TC-ASYNC-020")
def test_entries_are_marked_scored_in_batches_once_whatever_runs_again(store: Store) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    origin = now - timedelta(days=3)
    n = MARK_CHUNK + 50  # two chunks
    entries = [_price_entry(i, origin, origin + timedelta(minutes=i)) for i in range(n)]
    pending = [_price_entry(n + i, origin, now + timedelta(days=1)) for i in range(3)]
    store.ledger.entries_record(entries + pending)
    ids_before = {d["entry_id"]: d["_id"] for d in store.col(C.PREDICTION_LEDGER).find()}
    due = store.ledger.entries_due(now)
    assert [e["entry_id"] for e in due] == [e["entry_id"] for e in entries]

    # another run scored ten of them first: this run leaves them as they are
    other = [score_entry(e, 101.0, now - timedelta(minutes=5)) for e in due[:10]]
    assert store.ledger.entries_mark_scored(other) == 10
    # a run that stopped after its first chunk, then the scoring run again: it finds only
    # what is still due, and marking everything once more changes nothing
    copies = [score_entry(e, 99.0, now) for e in due]
    assert store.ledger.entries_mark_scored(copies[:MARK_CHUNK]) == MARK_CHUNK - 10
    rest = store.ledger.entries_due(now)
    assert [e["entry_id"] for e in rest] == [e["entry_id"] for e in entries[MARK_CHUNK:]]
    assert store.ledger.entries_mark_scored([score_entry(e, 99.0, now) for e in rest]) == 50
    assert store.ledger.entries_mark_scored(copies) == 0
    assert store.ledger.entries_due(now) == []

    docs = list(store.col(C.PREDICTION_LEDGER).find())
    assert {d["entry_id"]: d["_id"] for d in docs} == ids_before  # none lost, none added
    scored = {d["entry_id"]: d for d in docs if d["scored"]}
    assert set(scored) == {e["entry_id"] for e in entries}
    for i, e in enumerate(entries):
        d = scored[e["entry_id"]]
        first = i < 10  # scored once, by whichever run came first
        assert d["outcome_price"] == (101.0 if first else 99.0)
        assert d["scored_at"] == (now - timedelta(minutes=5) if first else now)
        assert d["target_time"] == e["target_time"] and d["inside"] is first
        assert d["expires_at"] == origin + timedelta(days=90)
    assert [e["entry_id"] for e in store.ledger.entries_find({"scored": False})] == [
        e["entry_id"] for e in pending
    ]
