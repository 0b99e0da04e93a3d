"""Batched candle read of bulk analysis (run: ``.venv/bin/python bench/bench_candle_read.py
[n_symbols]``).

``3 x n_symbols`` (default 100) synthetic symbols of 300 hourly candles in an embedded
nx-27017 store, seeded as ``bench_bulk_analysis`` does; ``Store.load_candles_many`` of
``n_symbols`` x 300 bars timed (three runs each, load beside every figure):

* **without tails** (the anchor: candles read from ``market_data``, as before
  ``candle_tails`` or after a writer that bypasses the platform);
* **with tails** (built by the write path's rebuild), checking the frames are equal;

and the write path's extra cost: one ``upsert_candles`` of one new bar (mark dirty, write,
rebuild the tail), and the bulk rebuild of every tail.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_bulk_analysis import load, seed_candles  # noqa: E402


def timed(fn):  # noqa: ANN001, ANN201
    """(seconds, load, result) of one call of ``fn``."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, load(), out


def main(n_symbols: int = 100) -> None:
    import pandas as pd

    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.market_data.synthetic import generate_candles
    from integrations.store import Store, connect

    tmp = Path(tempfile.mkdtemp())
    symbols = [f"S{i:03d}USDT" for i in range(3 * n_symbols)]
    wanted = symbols[:n_symbols]
    start = datetime(2026, 9, 1, tzinfo=UTC)
    mongo = start_embedded_mongo(tmp / "mongo")
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        seed_candles(store, symbols, start, tails=False)
        read = lambda: store.market.load_candles_batch(wanted, "1h", last_n=300)  # noqa: E731
        plain = [timed(read) for _ in range(3)]
        assert all(r.from_tails == () for _, _, r in plain)
        rebuild_s, rebuild_load, _ = timed(lambda: store.market.rebuild_candle_tails(symbols, "1h"))
        tails = [timed(read) for _ in range(3)]
        assert all(len(r.from_tails) == n_symbols for _, _, r in tails)
        for s in wanted:
            pd.testing.assert_frame_equal(tails[0][2].frames[s], plain[0][2].frames[s])
        bar = generate_candles(wanted[0], "1h", start, 301).iloc[-1:]
        write_s, write_load, _ = timed(
            lambda: store.upsert_candles(wanted[0], "1h", bar, source="synthetic")
        )
    finally:
        mongo.stop()
    rows = 3 * n_symbols * 300
    print(
        f"load_candles_many, {n_symbols} of {3 * n_symbols} symbols x 300 bars "
        f"({rows:,} candles stored), {os.cpu_count()} CPUs:"
    )
    for name, runs in (("without tails (market_data)", plain), ("with tails", tails)):
        each = ", ".join(f"{s:.2f} s ({ld})" for s, ld, _ in runs)
        print(f"  {name}: {each}")
    best_plain = min(s for s, _, _ in plain)
    best_tails = min(s for s, _, _ in tails)
    print(f"  ratio without / with tails (best runs) {best_plain / best_tails:.1f}x; same frames")
    print(f"  rebuild of {len(symbols)} tails {rebuild_s:.2f} s ({rebuild_load})")
    print(f"  upsert_candles of one new bar (tail rebuilt) {write_s:.2f} s ({write_load})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
