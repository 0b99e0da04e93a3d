"""Memory and CPU of the warm worker under a long mixed load (TC-ASYNC-091, TC-ASYNC-092).

Run: ``.venv/bin/python bench/bench_memory.py [runs] [in_flight] [budget_s]``
(defaults 200, 2, 3600). It takes a while: run it in the background, output to a file.

Set-up (all real, in a temporary folder, as bench/bench_short_jobs.py): a Prefect server
(PostgreSQL when 127.0.0.1:5432 answers), an nx-27017 store with 2,000 hourly candles of
BENCHUSDT and 800 of each of 10 more symbols, a small GRU trained, registered and deployed for
BENCHUSDT (bench/models.py), the MongoDB and model-store blocks, and the predict-price,
backtest-strategy, bulk-analysis and train-model deployments on one process pool (training
queue limited to 2, as the platform's) served by the platform's warm worker
(deployments/warm_worker.py) and its fork server.

``runs`` runs are created one after the other, at most ``in_flight`` unfinished at a time, in
a repeating mix of ten: 3 backtests (30 days, RSI/MACD/Bollinger in turn), 3 predict-price
(24 h), 3 bulk-analysis (11 symbols) and 1 tiny training (1 epoch, 8 units, a symbol in turn).

Every second: the RSS of the worker process and of its fork server (the flow-run processes
forked from it are counted apart), each core's CPU use (psutil), the load average and how
many runs ended. Printed: a line every 20 runs; then the RSS of the worker and of the fork
server after 10 runs (the anchor) and at the end, the growth against the anchor, and a
least-squares slope of RSS against runs ended (after the first 10), in MB per 100 runs; the
CPU use of each core while runs were in flight (mean, p50, p95) with the load beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MB = 1024 * 1024
SYMBOL = "BENCHUSDT"
OTHERS = [f"M{i:02d}USDT" for i in range(10)]
MIX = ["backtest", "predict", "bulk"] * 3 + ["train"]
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


@dataclass
class Sample:
    """One sampling second."""

    t: float
    runs_ended: int
    in_flight: int
    worker_rss: int
    server_rss: int
    run_rss: int
    largest_run_rss: int
    cores: list[float]
    load: float


@dataclass
class Trace:
    """What the sampler saw and what the driver did."""

    samples: list[Sample] = field(default_factory=list)
    ended: int = 0
    in_flight: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


def _is_fork_server(proc: psutil.Process) -> bool:
    with contextlib.suppress(psutil.Error):
        return "forkserver" in " ".join(proc.cmdline())
    return False


def measure(worker: psutil.Process) -> tuple[int, int, int, int]:
    """RSS of the worker, of its fork server (its direct child running ``forkserver``), of the
    flow-run processes forked from it (summed) and of the largest one, in bytes."""
    try:
        own = worker.memory_info().rss
        kids = worker.children()
    except psutil.Error:
        return 0, 0, 0, 0
    server = 0
    runs: list[int] = []
    for k in kids:
        with contextlib.suppress(psutil.Error):
            if not _is_fork_server(k):
                continue
            server += k.memory_info().rss
            for run in k.children(recursive=True):  # forked runs inherit its command line
                with contextlib.suppress(psutil.Error):
                    runs.append(run.memory_info().rss)
    return own, server, sum(runs), max(runs, default=0)


def sampler(worker: psutil.Process, trace: Trace) -> None:
    """Every second until ``trace.stop``: one :class:`Sample`."""
    psutil.cpu_percent(percpu=True)
    t0 = time.monotonic()
    while not trace.stop.wait(1.0):
        trace.samples.append(take_sample(worker, trace, time.monotonic() - t0))


def take_sample(worker: psutil.Process, trace: Trace, t: float) -> Sample:
    """One :class:`Sample` now (CPU per core since the previous call)."""
    own, server, runs, largest = measure(worker)
    return Sample(
        t=t,
        runs_ended=trace.ended,
        in_flight=trace.in_flight,
        worker_rss=own,
        server_rss=server,
        run_rss=runs,
        largest_run_rss=largest,
        cores=psutil.cpu_percent(percpu=True),
        load=os.getloadavg()[0],
    )


def run_parameters(i: int, end_date: str, start_date: str) -> tuple[str, dict]:
    """The deployment and parameters of run ``i`` of the mix."""
    from core.schemas.analysis import BulkAnalysisParams, PredictPriceParams
    from core.schemas.backtest import BacktestParameters
    from core.schemas.training import TrainModelParams

    kind = MIX[i % len(MIX)]
    if kind == "backtest":
        p = BacktestParameters(
            strategy_name=("rsi", "macd", "bollinger")[i % 3],
            symbol=SYMBOL,
            timeframe="1h",
            start_date=start_date,
            end_date=end_date,
        )
    elif kind == "predict":
        p = PredictPriceParams(symbol=SYMBOL, model_type="gru", horizon_hours=24)
    elif kind == "bulk":
        p = BulkAnalysisParams(symbols=[SYMBOL, *OTHERS], timeframe="1h", bars=300)
    else:
        p = TrainModelParams(
            model_type="lstm",
            symbol=OTHERS[(i // len(MIX)) % len(OTHERS)],
            timeframe="1h",
            days_of_data=30,
            epochs=1,
            batch_size=64,
            units=8,
            lookback=12,
        )
    return kind, {"params": p.model_dump(mode="json")}


def slope_mb_per_100(points: list[tuple[int, int]]) -> float:
    """Least-squares slope of RSS (bytes) against runs ended, in MB per 100 runs."""
    import numpy as np

    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float) / MB
    if len(set(x)) < 2:
        return float("nan")
    return float(np.polyfit(x, y, 1)[0] * 100)


def drive(
    client, deployments: dict, runs: int, in_flight: int, budget_s: float, trace: Trace, dates
) -> dict[str, int]:  # noqa: ANN001, E501
    """Create ``runs`` runs of the mix, at most ``in_flight`` unfinished. Returns end states."""
    pending: dict = {}
    states: dict[str, int] = {}
    created = 0
    t0 = time.monotonic()
    deadline = t0 + budget_s
    while (created < runs or pending) and time.monotonic() < deadline:
        while created < runs and len(pending) < in_flight:
            kind, params = run_parameters(created, *dates)
            run = client.create_flow_run_from_deployment(deployments[kind], parameters=params)
            pending[run.id] = kind
            created += 1
        trace.in_flight = len(pending)
        time.sleep(0.2)
        for run_id in list(pending):
            state = client.read_flow_run(run_id).state
            if state is not None and state.type.value in FINAL:
                kind = pending.pop(run_id)
                key = f"{kind} {state.type.value}"
                states[key] = states.get(key, 0) + 1
                trace.ended += 1
                if trace.ended % 20 == 0:
                    last = trace.samples[-1] if trace.samples else None
                    if last is not None:
                        print(
                            f"  {trace.ended} runs ended ({time.monotonic() - t0:.0f} s): "
                            f"worker {last.worker_rss / MB:.0f} MB, fork server "
                            f"{last.server_rss / MB:.0f} MB, cores "
                            f"{'/'.join(f'{c:.0f}' for c in last.cores)} %, load {last.load:.1f}",
                            flush=True,
                        )
    return states


def main(runs: int = 200, in_flight: int = 2, budget_s: float = 3600) -> None:
    from prefect.client.orchestration import get_client

    from bench.bench_latency import prefect_server, start_warm_worker, wait_online
    from bench.models import deploy_small_gru
    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from flows.backtest_strategy import backtest_strategy
    from flows.bulk_analysis import bulk_analysis
    from flows.predict_price import predict_price
    from flows.train_model import train_model
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.market_data.synthetic import generate_candles
    from integrations.store import Store, connect
    from tests.peers import create_process_deployment, create_process_pool

    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    os.environ["BOTAI_MIN_FREE_DISK_GB"] = "0.1"
    mongo = start_embedded_mongo(tmp / "mongo")
    worker_proc = None
    trace = Trace()
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        candles = generate_candles(SYMBOL, "1h", now - timedelta(hours=2000), 2000)
        store.upsert_candles(SYMBOL, "1h", candles, source="synthetic")
        for i, s in enumerate(OTHERS):  # ending now: a training reads the last 30 days
            frame = generate_candles(s, "1h", now - timedelta(hours=800), 800, seed=i)
            store.upsert_candles(s, "1h", frame, source="synthetic")
        model_block = ModelStoreBlock(directory=str(tmp / "models"), key=generate_model_key())
        (tmp / "models").mkdir()
        deploy_small_gru(store, tmp / "models", model_block.get_key(), SYMBOL, candles)
        dates = (candles.index[-1].date().isoformat(), candles.index[-720].date().isoformat())
        with prefect_server(tmp), get_client(sync_client=True) as client:
            MongoDBBlock(uri=mongo.uri, database="bench").save("mongodb", overwrite=True)
            model_block.save("model-store", overwrite=True)
            pool = "memory-bench"
            create_process_pool(pool, {"ml_training": 2, "analysis": None, "backtesting": None})
            deployments = {
                "predict": create_process_deployment(
                    predict_price,
                    "predict-price",
                    pool,
                    "analysis",
                    "flows/predict_price.py:predict_price",
                ),
                "bulk": create_process_deployment(
                    bulk_analysis,
                    "bulk-analysis",
                    pool,
                    "analysis",
                    "flows/bulk_analysis.py:bulk_analysis",
                ),
                "backtest": create_process_deployment(
                    backtest_strategy,
                    "backtest-strategy",
                    pool,
                    "backtesting",
                    "flows/backtest_strategy.py:backtest_strategy",
                ),
                "train": create_process_deployment(
                    train_model,
                    "train-model",
                    pool,
                    "ml_training",
                    "flows/train_model.py:train_model",
                ),
            }
            worker_proc = start_warm_worker(pool, tmp / "worker.log")
            online_s = wait_online(client, pool, worker_proc, 300)
            print(f"warm worker online after {online_s:.0f} s (load {os.getloadavg()[0]:.1f})")
            worker = psutil.Process(worker_proc.pid)
            thread = threading.Thread(target=sampler, args=(worker, trace), daemon=True)
            t0 = time.monotonic()
            thread.start()
            states = drive(client, deployments, runs, in_flight, budget_s, trace, dates)
            elapsed = time.monotonic() - t0
            trace.stop.set()
            thread.join(5)
            trace.in_flight = 0
            time.sleep(2)  # the last run's process has exited: the final, idle sample
            trace.samples.append(take_sample(worker, trace, time.monotonic() - t0))
    finally:
        trace.stop.set()
        if worker_proc is not None:
            worker_proc.terminate()
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        mongo.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(trace, states, runs, in_flight, elapsed)


def report(trace: Trace, states: dict[str, int], runs: int, in_flight: int, elapsed: float) -> None:
    """Print memory growth, slopes and CPU per core, with the load beside them."""
    import numpy as np

    samples = trace.samples
    print(
        f"\n{trace.ended}/{runs} runs ended in {elapsed:.0f} s ({in_flight} in flight at most, "
        f"{psutil.cpu_count()} CPUs): {dict(sorted(states.items()))}"
    )
    anchor = next((s for s in samples if s.runs_ended >= 10), None)
    if anchor is None or not samples:
        print("fewer than 10 runs ended: no memory figures")
        return
    # idle moments after the anchor (no run in flight) give the steady values; fall back to all
    after = [s for s in samples if s.runs_ended >= 10]
    end = samples[-1]
    for name, attr in (("worker", "worker_rss"), ("fork server", "server_rss")):
        first, last = getattr(anchor, attr) / MB, getattr(end, attr) / MB
        slope = slope_mb_per_100([(s.runs_ended, getattr(s, attr)) for s in after])
        growth = 100 * (last - first) / first if first else float("nan")
        peak = max(getattr(s, attr) for s in samples) / MB
        print(
            f"TC-ASYNC-091 {name}: RSS after 10 runs {first:.0f} MB (anchor), after "
            f"{end.runs_ended} runs {last:.0f} MB ({growth:+.1f} %), peak {peak:.0f} MB; "
            f"slope {slope:+.2f} MB per 100 runs (least squares over {len(after)} samples) "
            f"(load {anchor.load:.1f} -> {end.load:.1f})"
        )
    busy = [s for s in samples if s.in_flight > 0]
    cores = np.array([s.cores for s in busy]) if busy else np.zeros((1, psutil.cpu_count()))
    loads = [s.load for s in busy] or [0.0]
    for c in range(cores.shape[1]):
        col = cores[:, c]
        print(
            f"TC-ASYNC-092 core {c}: mean {col.mean():.0f} %, p50 {np.percentile(col, 50):.0f} %, "
            f"p95 {np.percentile(col, 95):.0f} % over {len(busy)} s with runs in flight"
        )
    print(
        f"TC-ASYNC-092 both cores: mean {cores.mean():.0f} % (target 60-80 % under load); "
        f"flow-run processes peak {max(s.run_rss for s in samples) / MB:.0f} MB together, "
        f"{max(s.largest_run_rss for s in samples) / MB:.0f} MB the largest one; load avg "
        f"mean {statistics.mean(loads):.1f}, max {max(loads):.1f}"
    )


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:]]
    main(*(int(a) for a in args[:2]), *args[2:3])
