"""The platform's own short jobs end to end: predict-price and one backtest, requested
through the gateway and run by the warm worker (issue targets: request -> Running p95
<= 1 s, request -> Completed p95 <= 1.5 s).

Run: ``.venv/bin/python bench/bench_short_jobs.py [rounds]`` (default 20).

Set-up (all real, in a temporary folder): a Prefect server (PostgreSQL when
127.0.0.1:5432 answers, as bench_latency.py), an nx-27017 store with 2,000 synthetic
hourly candles of BENCHUSDT, a small GRU trained on them, registered and deployed, the
MongoDB and model-store blocks, the predict-price and backtest-strategy deployments on a
process pool served by the platform's warm worker, and the gateway (the real FastAPI app in
this process, JWT-authenticated). Rounds alternate the two jobs, each requested on an idle
worker; per job: request -> Running and request -> Completed from the flow run's state
timestamps (the clock of this machine, as the request's), and request -> the gateway's
``GET /api/tasks/{id}`` answering SUCCESS with the result, p50/p95 with the load average.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SYMBOL = "BENCHUSDT"


def pct(values: list[float], q: float) -> float:
    """The ``q`` percentile (0-100) of ``values`` (linear interpolation)."""
    import numpy as np

    return float(np.percentile(values, q))


def once(http, client, path: str, body: dict, headers: dict) -> tuple[float, float, float]:  # noqa: ANN001
    """Request one job through the gateway and follow it to its result.

    Returns (request -> Running, request -> Completed, request -> result through the gateway).
    """
    from uuid import UUID

    t0 = time.time()
    r = http.post(path, json=body, headers=headers)
    if r.status_code != 202:
        raise SystemExit(f"{path} answered {r.status_code}: {r.json()}")
    task_id = r.json()["task_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = http.get(f"/api/tasks/{task_id}", headers=headers).json()
        if status["status"] in ("SUCCESS", "FAILURE", "REVOKED"):
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"task {task_id} did not finish in 300 s")
    seen = time.time() - t0
    if status["status"] != "SUCCESS" or not status.get("result"):
        raise SystemExit(f"task {task_id} ended {status['status']}: {status.get('error')}")
    stamps = {
        s.type.value: s.timestamp.timestamp() for s in client.read_flow_run_states(UUID(task_id))
    }
    return stamps["RUNNING"] - t0, stamps["COMPLETED"] - t0, seen


def main(rounds: int = 20) -> None:
    from prefect.client.orchestration import get_client

    from api.security import issue_token
    from bench.bench_latency import prefect_server, start_warm_worker, wait_online
    from bench.bench_load import gateway
    from bench.models import deploy_small_gru
    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from flows.backtest_strategy import backtest_strategy
    from flows.predict_price import predict_price
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.market_data.synthetic import generate_candles
    from integrations.store import Store, connect
    from tests.peers import create_process_deployment, create_process_pool

    tmp = Path(tempfile.mkdtemp(prefix="bench-short-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    mongo = start_embedded_mongo(tmp / "mongo")
    worker = None
    samples: dict[str, list[tuple[float, float, float, float]]] = {"predict": [], "backtest": []}
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        candles = generate_candles(SYMBOL, "1h", datetime(2026, 6, 1, tzinfo=UTC), 2000)
        store.upsert_candles(SYMBOL, "1h", candles, source="synthetic")
        model_block = ModelStoreBlock(directory=str(tmp / "models"), key=generate_model_key())
        (tmp / "models").mkdir()
        deploy_small_gru(store, tmp / "models", model_block.get_key(), SYMBOL, candles)
        with prefect_server(tmp), get_client(sync_client=True) as client:
            MongoDBBlock(uri=mongo.uri, database="bench").save("mongodb", overwrite=True)
            model_block.save("model-store", overwrite=True)
            pool = "short-jobs"
            create_process_pool(pool, {"analysis": None, "backtesting": None})
            create_process_deployment(
                predict_price,
                "predict-price",
                pool,
                "analysis",
                "flows/predict_price.py:predict_price",
            )
            create_process_deployment(
                backtest_strategy,
                "backtest-strategy",
                pool,
                "backtesting",
                "flows/backtest_strategy.py:backtest_strategy",
            )
            worker = start_warm_worker(pool, tmp / "worker.log")
            online_s = wait_online(client, pool, worker, 300)
            print(f"warm worker online after {online_s:.0f} s", flush=True)
            http, api_settings = gateway(store)
            headers = {"Authorization": f"Bearer {issue_token(api_settings, 'bench', admin=True)}"}
            end = candles.index[-1]
            jobs = {
                "predict": (
                    "/api/tasks/predict",
                    {"symbol": SYMBOL, "model_type": "gru", "horizon_hours": 24},
                ),
                "backtest": (
                    "/api/tasks/backtest",
                    {
                        "strategy_name": "rsi",
                        "symbol": SYMBOL,
                        "timeframe": "1h",
                        "start_date": candles.index[-720].date().isoformat(),  # 30 days
                        "end_date": end.date().isoformat(),
                    },
                ),
            }
            for path, body in jobs.values():  # one unmeasured run each (first fork, jit)
                once(http, client, path, body, headers)
            for i in range(rounds):
                for name, (path, body) in jobs.items():
                    load = os.getloadavg()[0]
                    samples[name].append((*once(http, client, path, body, headers), load))
                    time.sleep(0.3)
                print(f"  round {i + 1}/{rounds} done, load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        mongo.stop()
    report(samples)


def report(samples: dict[str, list[tuple[float, float, float, float]]]) -> None:
    """Print p50/p95 per job with the load beside them, against the targets."""
    print(f"\nshort jobs through the gateway on the warm worker ({os.cpu_count()} CPUs):")
    print(
        "| job | runs | request -> Running p50 / p95 | request -> Completed p50 / p95 "
        "| request -> result (GET) p50 / p95 | load mean (min-max) |"
    )
    print("|---|---|---|---|---|---|")
    for name, rows in samples.items():
        if not rows:
            continue
        cols = list(zip(*rows, strict=True))
        running, completed, seen, loads = (list(c) for c in cols)
        print(
            f"| {name} | {len(rows)} | {pct(running, 50):.2f} s / {pct(running, 95):.2f} s "
            f"| {pct(completed, 50):.2f} s / {pct(completed, 95):.2f} s "
            f"| {pct(seen, 50):.2f} s / {pct(seen, 95):.2f} s "
            f"| {statistics.mean(loads):.1f} ({min(loads):.1f}-{max(loads):.1f}) |"
        )
        print(
            f"  {name}: Running p95 {'<=' if pct(running, 95) <= 1.0 else '>'} 1 s, "
            f"Completed p95 {'<=' if pct(completed, 95) <= 1.5 else '>'} 1.5 s"
        )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
