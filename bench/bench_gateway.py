"""How fast the gateway accepts work and how soon it runs, measured from the caller's send.

Run: ``.venv/bin/python bench/bench_gateway.py [rounds] [phases]`` (default 50 rounds,
phases ``serial,concurrent,load``).

Set-up (all real, in a temporary folder), the default stack's shape: a Prefect server
(``BENCH_PREFECT_DATABASE``: ``sqlite`` by default as ``botai up`` runs it, or
``postgresql``: a fresh database on 127.0.0.1:5432), an nx-27017 store with hourly candles
of 17 symbols (2,000 bars of one, 300 of the others; written by the platform's candle
writer), a small GRU deployed for predict-price, the predict-price, backtest-strategy and
bulk-analysis deployments on a pool served by the warm worker, train-model on a pool no
worker serves (trainings are only accepted, never run), and the gateway served by uvicorn
in its own process (``api.main.serve``), called over HTTP with a JWT. The anchor: a Celery 5
worker (prefork, 1 child) behind an HTTP endpoint that calls ``delay()``
(``bench.latency_celery.http_app``), on this machine's RabbitMQ and Redis.

Phases:

* ``serial``: ``rounds`` requests of each job (predict-price, a 30-day backtest,
  bulk-analysis of 10 symbols, a training), one at a time, each short job followed to its
  end on an idle worker; then ``rounds`` Celery requests. Per job: send -> answered (the
  HTTP answer), send -> Running and send -> Completed (the run's state timestamps; Celery:
  the task body's start and the result), and created -> Running (the run's creation time
  to Running: what the worker adds).
* ``concurrent``: 20 callers at once, each requesting every short job in turn and
  following it to its end: the slowest answer, and how many accepted runs did not complete.
* ``load``: two CPU-bound processes beside the stack, 100 requests (0.5 s apart, the short
  jobs in turn): how many were accepted (202), the slowest answer, and how many completed.

The 1-minute load average is printed beside every figure.
"""

from __future__ import annotations

import contextvars
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("BENCH_PREFECT_DATABASE", "sqlite")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.bench_gateway_report import Phase, Sample, report, timeline  # noqa: E402

SYMBOL = "BENCHUSDT"
OTHERS = [f"GW{i:02d}USDT" for i in range(16)]


def load1() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


def follow(client: Any, sample: Sample, t0: float, timeout_s: float = 300) -> None:
    """Wait for the run of ``sample`` to end; fill in its Running/Completed times."""
    from uuid import UUID

    run_id = UUID(sample.task_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            break
        time.sleep(0.03)
    else:
        sample.final = "TIMEOUT"
        return
    sample.final = run.state.type.value
    stamps = {s.type.value: s.timestamp.timestamp() for s in client.read_flow_run_states(run_id)}
    if "RUNNING" in stamps:
        sample.running = stamps["RUNNING"] - t0
        sample.created_to_running = stamps["RUNNING"] - run.created.timestamp()
    if "COMPLETED" in stamps:
        sample.completed = stamps["COMPLETED"] - t0


def request(http: Any, job: str, path: str, body: dict, headers: dict) -> tuple[Sample, float]:
    """POST one job. Returns its sample (answer time filled in) and the send time."""
    load = load1()
    t0 = time.time()
    r = http.post(path, json=body, headers=headers)
    sample = Sample(job, load, r.status_code, time.time() - t0)
    if r.status_code == 202:
        sample.task_id = r.json()["task_id"]
    else:
        sample.final = f"HTTP {r.status_code}: {r.text[:200]}"
    return sample, t0


def celery_once(http: Any, task: Any) -> Sample:
    """One Celery request through its HTTP endpoint, followed to its result."""
    load = load1()
    t0 = time.time()
    r = http.post("/delay")
    answered = time.time() - t0
    out = task.AsyncResult(r.json()["id"]).get(timeout=60)
    done = time.time() - t0
    return Sample("celery", load, r.status_code, answered, out["started_at"] - t0, done)


def seed(store: Any, models_dir: Path, key: bytes) -> tuple[Any, list[str]]:
    """Candles of every symbol (through the platform's writer) and a deployed GRU."""
    from bench.models import deploy_small_gru
    from integrations.market_data.synthetic import generate_candles

    start = datetime(2026, 6, 1, tzinfo=UTC)
    candles = generate_candles(SYMBOL, "1h", start, 2000)
    store.upsert_candles(SYMBOL, "1h", candles, source="synthetic")
    for sym in OTHERS:
        frame = generate_candles(sym, "1h", start + timedelta(hours=1700), 300)
        store.upsert_candles(sym, "1h", frame, source="synthetic")
    deploy_small_gru(store, models_dir, key, SYMBOL, candles)
    return candles, OTHERS


def job_bodies(candles: Any) -> dict[str, tuple[str, dict]]:
    """The short jobs' requests: predict-price, a 30-day backtest, bulk-analysis of 10."""
    return {
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
                "start_date": candles.index[-720].date().isoformat(),
                "end_date": candles.index[-1].date().isoformat(),
            },
        ),
        "bulk": ("/api/tasks/bulk-analysis", {"symbols": [SYMBOL, *OTHERS[:9]], "bars": 200}),
    }


def training_body(i: int) -> dict:
    """The ``i``-th distinct training (model type x symbol): never a duplicate (409)."""
    return {
        "model_type": ("lstm", "gru", "transformer")[i % 3],
        "symbol": OTHERS[(i // 3) % len(OTHERS)],
        "timeframe": "1h",
        "days_of_data": 7,
        "epochs": 1,
    }


def wait_for_load(limit: float, budget_s: float) -> float:
    """Wait up to ``budget_s`` for the 1-minute load to fall to ``limit``. Returns it."""
    deadline = time.monotonic() + budget_s
    while load1() > limit and time.monotonic() < deadline:
        time.sleep(5)
    return load1()


def serial(ctx: dict, rounds: int) -> Phase:
    """One request at a time: the targets' figures. Each round first waits (up to
    ``BENCH_LOAD_WAIT_S``, default 0) for the load to fall to ``BENCH_MAX_LOAD`` (4)."""
    phase = Phase("serial")
    limit = float(os.environ.get("BENCH_MAX_LOAD", "4"))
    wait_s = float(os.environ.get("BENCH_LOAD_WAIT_S", "0"))
    http, client, headers = ctx["http"], ctx["client"], ctx["headers"]
    for job, (path, body) in ctx["jobs"].items():  # one unmeasured run each (first fork)
        s, t0 = request(http, job, path, body, headers)
        follow(client, s, t0)
    for i in range(rounds):
        if wait_s:
            wait_for_load(limit, wait_s)
        for job, (path, body) in ctx["jobs"].items():
            s, t0 = request(http, job, path, body, headers)
            if s.task_id:
                follow(client, s, t0)
            phase.samples.append(s)
            time.sleep(0.3)
        s, _ = request(http, "train", "/api/tasks/train", training_body(i), headers)
        phase.samples.append(s)
        phase.samples.append(celery_once(ctx["celery_http"], ctx["celery_task"]))
        if (i + 1) % 10 == 0:
            print(f"  serial round {i + 1}/{rounds}, load {load1():.1f}", flush=True)
    if os.environ.get("BENCH_TIMELINE") == "1":
        for job in ctx["jobs"]:
            last = [s for s in phase.samples if s.job == job and s.task_id]
            if last:
                timeline(client, last[-1])
    return phase


def concurrent(ctx: dict, callers: int = 20) -> Phase:
    """``callers`` at once, each requesting every short job in turn, following each."""
    import httpx
    from prefect.client.orchestration import get_client

    phase = Phase(f"concurrent ({callers} callers)")
    lock = threading.Lock()

    def caller(n: int) -> None:
        with (
            httpx.Client(base_url=ctx["base_url"], timeout=60) as http,
            get_client(sync_client=True) as client,
        ):
            jobs = list(ctx["jobs"].items())
            for k in range(len(jobs)):
                job, (path, body) = jobs[(n + k) % len(jobs)]
                s, t0 = request(http, job, path, body, ctx["headers"])
                if s.task_id:
                    follow(client, s, t0, timeout_s=600)
                with lock:
                    phase.samples.append(s)

    # each thread runs in a copy of this thread's context: Prefect's settings (the API URL)
    # live in context variables, which new threads do not inherit
    contexts = [contextvars.copy_context() for _ in range(callers)]
    with ThreadPoolExecutor(callers) as pool:
        list(pool.map(lambda n: contexts[n].run(caller, n), range(callers)))
    return phase


def under_load(ctx: dict, n: int = 100) -> Phase:
    """``n`` requests 0.5 s apart with two CPU-bound processes running beside the stack."""
    phase = Phase("load (2 CPU-bound processes beside)")
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    sent: list[tuple[Sample, float]] = []
    try:
        deadline = time.monotonic() + 90
        while load1() < 6 and time.monotonic() < deadline:
            time.sleep(2)
        phase.notes.append(f"load when the requests began: {load1():.1f}")
        jobs = list(ctx["jobs"].items())
        for i in range(n):
            job, (path, body) = jobs[i % len(jobs)]
            sent.append(request(ctx["http"], job, path, body, ctx["headers"]))
            time.sleep(0.5)
        for s, t0 in sent:
            if s.task_id:
                follow(ctx["client"], s, t0, timeout_s=600)
            phase.samples.append(s)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    return phase


def main(rounds: int = 50, phases: str = "serial,concurrent,load") -> None:
    import secrets

    import httpx
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from api.security import issue_token
    from api.settings import load_api_settings
    from bench.bench_latency import api_auth_env, ensure_brokers, prefect_server, wait_online
    from bench.latency_celery import short_job_task
    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from core.settings import load_settings
    from deployments.services import jax_cache_env
    from flows.backtest_strategy import backtest_strategy
    from flows.bulk_analysis import bulk_analysis
    from flows.predict_price import predict_price
    from flows.train_model import train_model
    from integrations.embedded_mongo import free_port, start_embedded_mongo
    from integrations.store import Store, connect
    from tests.peers import create_process_deployment, create_process_pool

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop what it started
    notes = ensure_brokers()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    results: list[Phase] = []
    with ExitStack() as stack:
        mongo = start_embedded_mongo(tmp / "mongo")
        stack.callback(mongo.stop)
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        (tmp / "models").mkdir()
        model_block = ModelStoreBlock(directory=str(tmp / "models"), key=generate_model_key())
        candles, _ = seed(store, tmp / "models", model_block.get_key())
        stack.enter_context(prefect_server(tmp))
        client = stack.enter_context(get_client(sync_client=True))
        MongoDBBlock(uri=mongo.uri, database="bench").save("mongodb", overwrite=True)
        model_block.save("model-store", overwrite=True)
        create_process_pool("bench-gw", {"analysis": None, "backtesting": None})
        create_process_pool("bench-gw-idle", {"ml_training": None})
        for flow, name, pool, queue, entry in (
            (predict_price, "predict-price", "bench-gw", "analysis", "flows/predict_price.py"),
            (backtest_strategy, "backtest-strategy", "bench-gw", "backtesting", "flows/backtest_strategy.py"),
            (bulk_analysis, "bulk-analysis", "bench-gw", "analysis", "flows/bulk_analysis.py"),
            (train_model, "train-model", "bench-gw-idle", "ml_training", "flows/train_model.py"),
        ):  # fmt: skip
            create_process_deployment(flow, name, pool, queue, f"{entry}:{flow.fn.__name__}")
        secret = secrets.token_urlsafe(48)
        port, celery_port = free_port(), free_port()
        env = {
            **os.environ,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            **api_auth_env(),
            **jax_cache_env(load_settings()),
        }
        gw_env = {
            **env,
            "BOTAI_API_JWT_SECRET": secret,
            "BOTAI_API_PORT": str(port),
            "BOTAI_API_TASKS_PER_DAY": "100000",
            "BOTAI_API_TRAININGS_PER_DAY": "100000",
        }
        commands = {
            "worker": ([sys.executable, "-m", "deployments.warm_worker", "--pool", "bench-gw"], env),
            "gateway": (
                [sys.executable, "-c", "from api.main import serve; from api.settings import "
                 "load_api_settings; serve(load_api_settings())"],
                gw_env,
            ),
            "celery": (
                [sys.executable, "-m", "celery", "-A", "bench.latency_celery", "worker",
                 "--pool", "prefork", "-c", "1", "--loglevel", "WARNING"],
                env,
            ),
            "celery-http": (
                [sys.executable, "-m", "uvicorn", "bench.latency_celery:http_app", "--factory",
                 "--port", str(celery_port), "--log-level", "warning"],
                env,
            ),
        }  # fmt: skip
        procs = {}
        for name, (cmd, penv) in commands.items():
            out = stack.enter_context(open(tmp / f"{name}.log", "w"))
            procs[name] = subprocess.Popen(
                cmd, env=penv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
            )
            stack.callback(_stop, procs[name])
        print(
            f"warm worker online after {wait_online(client, 'bench-gw', procs['worker'], 300):.0f} s"
        )
        base_url = f"http://127.0.0.1:{port}"
        http = stack.enter_context(httpx.Client(base_url=base_url, timeout=60))
        celery_http = stack.enter_context(
            httpx.Client(base_url=f"http://127.0.0.1:{celery_port}", timeout=60)
        )
        _wait_http(http, "/api/health", procs["gateway"])
        _wait_http(celery_http, "/docs", procs["celery-http"])
        short_job_task.delay().get(timeout=120)  # Celery worker up and connected
        celery_once(celery_http, short_job_task)
        api_settings = load_api_settings(jwt_secret=secret)
        ctx = {
            "http": http,
            "client": client,
            "base_url": base_url,
            "headers": {
                "Authorization": f"Bearer {issue_token(api_settings, 'bench', admin=True)}"
            },
            "jobs": job_bodies(candles),
            "celery_http": celery_http,
            "celery_task": short_job_task,
        }
        print(f"stack ready, load {load1():.1f}; {'; '.join(notes)}", flush=True)
        for name in phases.split(","):
            started = time.monotonic()
            if name == "serial":
                results.append(serial(ctx, rounds))
            elif name == "concurrent":
                results.append(concurrent(ctx))
            elif name == "load":
                results.append(under_load(ctx))
            else:
                raise SystemExit(f"unknown phase {name!r}: use serial, concurrent, load")
            results[-1].notes.append(f"{time.monotonic() - started:.0f} s")
            report(results[-1:])
        _cancel_open(client)
    print("\n==== all phases")
    report(results)


def _wait_http(http: Any, path: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            if http.get(path).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{path} did not answer in {timeout_s} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _cancel_open(client: Any) -> None:
    """Cancel the runs still queued (the trainings nobody serves)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Cancelled

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        limit=200,
    )
    for run in runs:
        client.set_flow_run_state(run.id, Cancelled(), force=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]), *sys.argv[2:3])
