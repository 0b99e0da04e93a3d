"""Benchmark: our engine vs vectorbt and backtesting.py, ratios measured in the same run.

RSI(14) 30/70 long-only, 0.1% fees, on the real BTC hours (../shared/data) and on
100,000 generated bars: one backtest, a 50-combination grid, and a cold start in a new
process. Run with the bench venv (docs/backtesting.md):

    .venv-bench/bin/python bench/bench_backtest.py [--skip-backtesting-py]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from backtest.engine import run_backtest  # noqa: E402
from backtest.indicators import rsi  # noqa: E402
from backtest.metrics import compute_metrics  # noqa: E402
from backtest.optimize import evaluate_params  # noqa: E402
from backtest.strategies import Candles  # noqa: E402
from core.schemas.backtest import BacktestConfig  # noqa: E402
from integrations.market_data.csv_source import read_candles_csv  # noqa: E402

CSV = REPO.parent / "shared" / "data" / "Coinbase_BTCUSD_1h.csv"
CFG = BacktestConfig(fee_bps=10)


def real_hours() -> pd.DataFrame:
    return read_candles_csv(CSV).frame.sort_index()


def generated(n: int = 100_000, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 10_000 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    spread = np.abs(rng.normal(0, 0.001, n)) * close
    idx = pd.date_range("2020-01-01", periods=n, freq="min", tz="UTC", name="open_time")
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.lognormal(3, 1, n),
        },
        index=idx,
    )


GRID = [
    {"rsi_period": p, "oversold": lo, "overbought": hi}
    for p in (10, 12, 14, 16, 18)
    for lo in (20.0, 25.0, 30.0, 35.0, 40.0)
    for hi in (65.0, 75.0)
]  # 50 combinations


def best_of(fn, repeat: int = 3, budget_s: float = 0.5) -> float:
    """Fastest of at least ``repeat`` calls, calling again while under ``budget_s`` in all
    (as timeit's autorange): every library gets the same rule, so fast ones are not
    judged on a single noisy call."""
    times: list[float] = []
    while len(times) < repeat or (sum(times) < budget_s and len(times) < 200):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


# ---------------------------------------------------------------- ours
def ours_one(frame: pd.DataFrame, with_metrics: bool = True) -> float:
    c = Candles.from_frame(frame)
    r = rsi(c.close, 14)
    run = run_backtest(c, r < 30, r > 70, CFG)
    if with_metrics:
        return compute_metrics(run).total_return_pct
    return (run.equity[-1] / CFG.initial_capital - 1) * 100


def ours_grid(frame: pd.DataFrame) -> None:
    evaluate_params(Candles.from_frame(frame), "rsi", GRID, CFG)


# ---------------------------------------------------------------- vectorbt
def vbt_one(frame: pd.DataFrame, with_sharpe: bool = True) -> float:
    import vectorbt as vbt

    close = frame["close"]
    r = vbt.talib("RSI").run(close, timeperiod=14).real  # Wilder RSI, as ours
    pf = vbt.Portfolio.from_signals(
        close, r < 30, r > 70, price=frame["open"].shift(-1), fees=0.001, freq="1h"
    )
    if with_sharpe:
        pf.sharpe_ratio()
    return float(pf.total_return()) * 100


def vbt_grid(frame: pd.DataFrame) -> None:
    import vectorbt as vbt

    close = frame["close"]
    periods = sorted({g["rsi_period"] for g in GRID})
    rsis = vbt.talib("RSI").run(close, timeperiod=periods).real
    rsis.columns = periods
    entries = pd.concat([rsis[g["rsi_period"]] < g["oversold"] for g in GRID], axis=1)
    exits = pd.concat([rsis[g["rsi_period"]] > g["overbought"] for g in GRID], axis=1)
    entries.columns = exits.columns = range(len(GRID))
    pf = vbt.Portfolio.from_signals(
        close, entries, exits, price=frame["open"].shift(-1), fees=0.001, freq="1h"
    )
    pf.sharpe_ratio()


# ---------------------------------------------------------------- backtesting.py
def bt_run(frame: pd.DataFrame, params: dict) -> float:
    from backtesting import Backtest, Strategy

    class RSI(Strategy):
        rsi_period = 14
        oversold = 30.0
        overbought = 70.0

        def init(self) -> None:
            self.r = self.I(rsi, self.data.Close, self.rsi_period)

        def next(self) -> None:
            if self.r[-1] < self.oversold and not self.position:
                self.buy()
            elif self.r[-1] > self.overbought and self.position:
                self.position.close()

    data = frame.rename(columns=str.capitalize)[["Open", "High", "Low", "Close", "Volume"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stats = Backtest(data, RSI, cash=1e9, commission=0.001).run(**params)
    return float(stats["Return [%]"])


COLD_READ = (
    "from integrations.market_data.csv_source import read_candles_csv\n"
    f"frame = read_candles_csv({str(CSV)!r}).frame.sort_index()\n"
)
COLD_SNIPPETS = {  # each imports only its own library (plus the shared CSV reader)
    "interpreter": "pass",
    "interpreter + numpy": "import numpy",
    "ours": COLD_READ + "from backtest.engine import run_backtest\n"
    "from backtest.indicators import rsi\n"
    "from backtest.metrics import compute_metrics\n"
    "from backtest.strategies import Candles\n"
    "from core.schemas.backtest import BacktestConfig\n"
    "c = Candles.from_frame(frame)\n"
    "r = rsi(c.close, 14)\n"
    "compute_metrics(run_backtest(c, r < 30, r > 70, BacktestConfig(fee_bps=10)))\n",
    "vectorbt": COLD_READ + "import vectorbt as vbt\n"
    "r = vbt.talib('RSI').run(frame['close'], timeperiod=14).real\n"
    "vbt.Portfolio.from_signals(frame['close'], r < 30, r > 70, price=frame['open'].shift(-1),"
    " fees=0.001, freq='1h').sharpe_ratio()\n",
    "backtesting.py": COLD_READ
    + "from backtest.indicators import rsi\n"  # numpy only; TA-Lib's import pulls in pandas
    "from backtesting import Backtest, Strategy\n"
    "class RSI(Strategy):\n"
    "    def init(self):\n"
    "        self.r = self.I(rsi, self.data.Close, 14)\n"
    "    def next(self):\n"
    "        if self.r[-1] < 30 and not self.position:\n"
    "            self.buy()\n"
    "        elif self.r[-1] > 70 and self.position:\n"
    "            self.position.close()\n"
    "data = frame.rename(columns=str.capitalize)[['Open', 'High', 'Low', 'Close', 'Volume']]\n"
    "Backtest(data, RSI, cash=1e9, commission=0.001).run()\n",
}


def cold_start(lib: str, repeat: int = 3) -> float:
    """Best of ``repeat`` wall times of a new process running the library's snippet."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-W", "ignore", "-c", COLD_SNIPPETS[lib]],
            cwd=REPO,
            check=True,
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")  # backtesting.py progress bars
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-backtesting-py", action="store_true")
    args = ap.parse_args()
    datasets = {"real BTC hours (20,111)": real_hours(), "generated (100,000)": generated()}
    try:
        import vectorbt  # noqa: F401

        have_vbt = True
        vbt_one(datasets["real BTC hours (20,111)"])  # numba compilation, not timed
    except ImportError:
        have_vbt = False
        print("vectorbt not installed: run with .venv-bench (docs/backtesting.md)")
    rows = []
    for name, frame in datasets.items():
        ours = best_of(lambda f=frame: ours_one(f))
        vbt = best_of(lambda f=frame: vbt_one(f)) if have_vbt else float("nan")
        btp = (
            best_of(lambda f=frame: bt_run(f, {})) if not args.skip_backtesting_py else float("nan")
        )
        rows.append((f"one backtest, {name}", ours, vbt, btp))
        rows.append(
            (
                f"  same, total return only (no Sharpe), {name}",
                best_of(lambda f=frame: ours_one(f, False)),
                best_of(lambda f=frame: vbt_one(f, False)) if have_vbt else float("nan"),
                btp,
            )
        )
        ours_g = best_of(lambda f=frame: ours_grid(f))
        vbt_g = best_of(lambda f=frame: vbt_grid(f)) if have_vbt else float("nan")
        btp_g = float("nan")
        if not args.skip_backtesting_py:
            t = time.perf_counter()
            for g in GRID:
                bt_run(frame, g)
            btp_g = time.perf_counter() - t
        rows.append((f"50-combination grid, {name}", ours_g, vbt_g, btp_g))
        print(
            f"sanity {name}: total return ours {ours_one(frame):.2f}%"
            + (f", vectorbt {vbt_one(frame):.2f}%" if have_vbt else "")
            + (
                f", backtesting.py {bt_run(frame, {}):.2f}%" if not args.skip_backtesting_py else ""
            ),
            flush=True,
        )
    rows.append(
        (
            "cold start (new process: read CSV, one backtest + metrics)",
            cold_start("ours"),
            cold_start("vectorbt") if have_vbt else float("nan"),
            cold_start("backtesting.py") if not args.skip_backtesting_py else float("nan"),
        )
    )
    floor = cold_start("interpreter")
    with_numpy = cold_start("interpreter + numpy")
    print(
        f"\n{'row':58} {'ours s':>9} {'vbt s':>9} {'bt.py s':>9} {'vbt/ours':>9} {'bt.py/ours':>10}"
    )
    for label, o, v, b in rows:
        print(f"{label:58} {o:9.4f} {v:9.4f} {b:9.4f} {v / o:9.1f} {b / o:10.1f}")
    bt_cold = rows[-1][3]
    print(
        f"\nfloor of any cold start: interpreter alone {floor:.4f} s "
        f"(backtesting.py cold start / it = {bt_cold / floor:.1f}x), "
        f"interpreter + numpy import {with_numpy:.4f} s ({bt_cold / with_numpy:.1f}x)"
    )


if __name__ == "__main__":
    main()
