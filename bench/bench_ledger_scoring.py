"""Marking ledger entries scored, one by one against batched (run: ``.venv/bin/python
bench/bench_ledger_scoring.py [background ...]``).

For N = 720 and 2,880 due entries (a month of hourly entries of one and of four series) in a
ledger that already holds ``background`` scored entries (default 0 and 20,000), on an
embedded nx-27017 store:

* **one by one** (the anchor: the former ``entry_mark_scored``, one ``replace_one`` under
  ``{entry_id, scored: False}`` per entry);
* **batched**: ``store.ledger.entries_mark_scored`` (per 2,000 entries one ``$in`` read of
  their ``_id`` and one ``bulk_write``), then the same call again (nothing left to score).

Each line gives seconds, ms per entry and the 1-minute load average (``os.getloadavg``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIZES = (720, 2_880)


def entries(prefix: str, n: int, origin: datetime, *, scored: bool) -> list[dict[str, Any]]:
    """``n`` price entries of run ``prefix`` (hourly targets from ``origin``)."""
    return [
        {
            "entry_id": f"{prefix}:BENCHUSDT:price:{i}",
            "task_id": prefix,
            "kind": "price",
            "model_id": "bench",
            "model_version": 1,
            "symbol": "BENCHUSDT",
            "timeframe": "1h",
            "made_at": origin,
            "created_at": origin,
            "origin_time": origin,
            "origin_price": 100.0,
            "hour": 1 + i % 24,
            "target_time": origin + timedelta(minutes=i),
            "predicted_price": 100.5,
            "lower": 99.5,
            "upper": 101.5,
            "interval_level": 0.8,
            "confidence": 0.6,
            "up_probability": 0.6,
            "scored": scored,
        }
        for i in range(n)
    ]


def one_by_one(store: Any, copies: list[dict[str, Any]]) -> int:
    """The former per-entry write: one ``replace_one`` by ``entry_id`` each."""
    from integrations.store import C

    col = store.ledger.col(C.PREDICTION_LEDGER)
    done = 0
    for e in copies:
        body = store.ledger.stamped(C.PREDICTION_LEDGER, e)
        flt = {"entry_id": body["entry_id"], "scored": False}
        result = store.ledger.call(
            "scoring a ledger entry",
            lambda flt=flt, body=body: col.replace_one(flt, body),
        )
        done += result.matched_count
    return done


def main(backgrounds: tuple[int, ...] = (0, 20_000)) -> None:
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.store import C, Store, connect
    from ml.scoring import score_entry

    now = datetime.now(UTC).replace(microsecond=0)
    origin = now - timedelta(days=10)
    mongo = start_embedded_mongo(Path(tempfile.mkdtemp()) / "mongo")
    print(f"marking ledger entries scored on nx-27017, {os.cpu_count()} CPUs")
    try:
        for background in backgrounds:
            for n in SIZES:
                for mode in ("one by one", "batched"):
                    store = Store(connect(mongo.uri), f"bench_{background}_{n}_{mode[0]}")
                    store.ensure_indexes()
                    col = store.ledger.col(C.PREDICTION_LEDGER)
                    if background:
                        old = entries("old", background, origin - timedelta(days=30), scored=True)
                        col.insert_many([store.ledger.stamped(C.PREDICTION_LEDGER, e) for e in old])
                    store.ledger.entries_record(entries("due", n, origin, scored=False))
                    t0 = time.perf_counter()
                    due = store.ledger.entries_due(now)
                    read_s = time.perf_counter() - t0
                    copies = [score_entry(e, 101.0, now) for e in due]
                    t0 = time.perf_counter()
                    if mode == "one by one":
                        done = one_by_one(store, copies)
                    else:
                        done = store.ledger.entries_mark_scored(copies)
                    write_s = time.perf_counter() - t0
                    load = os.getloadavg()[0]
                    again = ""
                    if mode == "batched":
                        t0 = time.perf_counter()
                        assert store.ledger.entries_mark_scored(copies) == 0
                        again = f"; again (nothing to score) {time.perf_counter() - t0:.2f} s"
                    assert done == n and not store.ledger.entries_due(now), (done, n)
                    print(
                        f"  ledger {background + n:>6,} ({n:,} due): {mode:<10} "
                        f"{write_s:7.2f} s ({1000 * write_s / n:5.1f} ms/entry, load {load:.2f})"
                        f"{again}; entries_due read {read_s:.2f} s",
                        flush=True,
                    )
                    store.close()
    finally:
        mongo.stop()


if __name__ == "__main__":
    main(tuple(int(a) for a in sys.argv[1:]) or (0, 20_000))
