"""Drawing time of the run-page pictures, against the equity chart alone (the anchor: the only
picture before, 0.08 s on an idle machine) measured in the same run.

Run: ``.venv/bin/python bench/bench_charts.py`` (needs ``../shared/data`` for the real hours).

Pictures: the backtest chart (fills on the close, equity, drawdown) of RSI(14) on six months
and on all 20,111 real BTC hours; the grid optimisation heatmap (its out-of-sample Sharpe
ratios and its drawing separately); the bulk-analysis signal map of 500 and of 5 symbols.
Each figure is the median (and fastest) of 5 calls after one warm-up, printed with the
machine's load average (2 shared cores: the absolute times move with the load, the ratios
much less).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
DATA = REPO.parent / "shared" / "data" / "Coinbase_BTCUSD_1h.csv"


def timed(fn: Callable[[], object], reps: int = 5) -> tuple[float, float]:
    """Median and fastest seconds of ``reps`` calls of ``fn`` after a warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), min(times)


def main() -> None:
    import numpy as np

    from backtest.charts import render_backtest_chart, render_equity_chart
    from backtest.heatmap import optimization_heatmap, render_heatmap
    from backtest.metrics import to_datetime
    from backtest.optimize import grid_search, local_evaluator
    from backtest.samples import holdout_start, label_samples
    from backtest.service import backtest_candles
    from backtest.strategies import Candles
    from core.schemas.analysis import BulkAnalysisResult, SymbolAnalysis
    from core.schemas.backtest import OptimizationResult, OptimizeParameters
    from integrations.market_data.csv_source import read_candles_csv
    from ml.signal_map import render_signal_map

    hours = read_candles_csv(DATA).frame.sort_index()
    first = datetime(2019, 3, 22, tzinfo=UTC)
    six = hours.loc[first : datetime(2019, 9, 22, tzinfo=UTC) - timedelta(hours=1)]
    rows: list[tuple[str, tuple[float, float]]] = []
    result = backtest_candles(six, "rsi", {}, symbol="BTCUSD", timeframe="1h")
    rows.append(
        ("equity chart alone, 4,416 bars (anchor)", timed(lambda: render_equity_chart(result)))
    )
    rows.append(
        (
            f"trades+equity chart, 4,416 bars, {result.metrics.total_trades} trades",
            timed(lambda: render_backtest_chart(result, six["close"])),
        )
    )
    everything = backtest_candles(hours, "rsi", {}, symbol="BTCUSD", timeframe="1h")
    rows.append(
        (
            f"trades+equity chart, {len(hours):,} bars, {everything.metrics.total_trades} trades",
            timed(lambda: render_backtest_chart(everything, hours["close"])),
        )
    )

    candles = Candles.from_frame(six)
    params = OptimizeParameters(
        symbol="BTCUSD", start_date=date(2019, 3, 22), end_date=date(2019, 9, 22), holdout_pct=25
    )
    split = holdout_start(len(candles), 25)
    entries, size = grid_search(candles.slice(0, split), "rsi", 50, local_evaluator("rsi"))
    best = backtest_candles(
        six.iloc[:split], "rsi", entries[0].parameters, symbol="BTCUSD", timeframe="1h"
    )
    ins, oos, headline, note = label_samples(candles, split, best, None, len(entries), params)
    opt = OptimizationResult(
        method="grid", strategy_name="rsi", symbol="BTCUSD", timeframe="1h",
        start=to_datetime(candles.time[0]), end=to_datetime(candles.time[-1]),
        space_size=size, evaluations=len(entries), headline=headline,
        headline_metrics=oos.metrics, headline_note=note, in_sample=ins, out_of_sample=oos,
        all_results=entries, best_parameters=entries[0].parameters, best_result=best,
    )  # fmt: skip
    hm = optimization_heatmap(opt, candles, split)
    cells = int(np.isfinite(hm.in_sample).sum())
    rows.append(
        (
            f"heatmap data (out-of-sample Sharpe of {cells} cells)",
            timed(lambda: optimization_heatmap(opt, candles, split)),
        )
    )
    rows.append(
        (f"heatmap drawing, {hm.in_sample.shape[0]} x {hm.in_sample.shape[1]} cells",
         timed(lambda: render_heatmap(hm, "Sharpe")))
    )  # fmt: skip

    rng = np.random.default_rng(5)
    now = datetime(2026, 12, 1, tzinfo=UTC)

    def bulk(n: int) -> BulkAnalysisResult:
        signals = ("BUY", "SELL", "HOLD")
        results = [
            SymbolAnalysis(
                symbol=f"S{i:03d}USDT",
                signal=signals[i % 3],
                confidence=float(c),
                price=1.0,
                timestamp=now,
                indicators={},
                source="indicators",
            )  # fmt: skip
            for i, c in enumerate(rng.uniform(0, 1, n))
        ]
        results.sort(key=lambda a: -a.confidence)
        return BulkAnalysisResult(
            timeframe="1h", total_symbols=n, symbols_analyzed=n, failed_symbols=[],
            results=results, batches=1, elapsed_s=0.0,
        )  # fmt: skip

    big, small = bulk(500), bulk(5)
    rows.append(("signal map, 500 symbols", timed(lambda: render_signal_map(big))))
    rows.append(("signal map, 5 symbols", timed(lambda: render_signal_map(small))))

    anchor = rows[0][1][0]
    print(f"{'picture':58} {'median s':>9} {'min s':>7} {'x anchor':>9} {'load':>6}")
    for label, (median, fastest) in rows:
        print(
            f"{label:58} {median:9.3f} {fastest:7.3f} {median / anchor:9.2f} "
            f"{os.getloadavg()[0]:6.2f}"
        )


if __name__ == "__main__":
    main()
