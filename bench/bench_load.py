"""Load bench (TC-ASYNC-086, 091, 092): many trainings queued at once through the warm worker.

Run: ``.venv/bin/python bench/bench_load.py [trainings] [short_runs] [budget_s]``
(defaults 100, 200, 1500).

Set-up (all real, in a temporary folder): a Prefect server (on PostgreSQL when
127.0.0.1:5432 answers, as bench_latency.py), an nx-27017 store holding 20
synthetic symbols (760 hourly candles each), the MongoDB and model-store blocks, a process
pool whose ``ml_training`` queue has concurrency 2 (as the platform's), the train-model and
latency-job deployments, and the platform's warm worker (deployments/warm_worker.py).

1. **TC-ASYNC-086**: ``trainings`` train-model runs (10 epochs, 20 symbols; LSTM, GRU and
   Transformer on 1h and 4h candles in turn, so no two are the same training) are requested at once through the gateway (``POST /api/tasks/train``, the real
   FastAPI app in this process, JWT-authenticated): one operator per 10 trainings, since
   the gateway's quota allows 10 trainings per user per day. Every second: how many runs
   are Running (must never exceed 2), the RSS of the worker (worker + fork server) and of
   each flow-run process, and the machine's CPU utilisation (TC-ASYNC-092).
2. **TC-ASYNC-091**: ``short_runs`` short runs (bench/latency_job.py) one after the other
   through the same worker; the worker's RSS after 10 and after ``short_runs`` runs.

Every phase is bounded by ``budget_s`` (what did not finish is reported, not waited for).
Figures are printed with the load average beside them.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MB = 1024 * 1024
SYMBOLS = [f"L{i:02d}USDT" for i in range(20)]
TIMEFRAMES = ("1h", "4h")
DAYS = {"1h": 30, "4h": 120}  # 720 bars of either


def tree_rss(proc: psutil.Process) -> tuple[int, list[tuple[int, int]]]:
    """RSS of ``proc`` and of each of its descendants. Returns (own, [(pid, rss)])."""
    try:
        own = proc.memory_info().rss
        kids = []
        for c in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                kids.append((c.pid, c.memory_info().rss))
        return own, kids
    except psutil.Error:
        return 0, []


def worker_rss(worker: psutil.Process, run_pids: set[int]) -> tuple[int, dict[int, int]]:
    """Worker memory (worker + its fork server, flow runs excluded) and each run's RSS."""
    own, kids = tree_rss(worker)
    runs = {pid: rss for pid, rss in kids if pid in run_pids}
    return own + sum(rss for pid, rss in kids if pid not in run_pids and _is_server(pid)), runs


def _is_server(pid: int) -> bool:
    try:
        return "forkserver" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def main(trainings: int = 100, short_runs: int = 200, budget_s: float = 1500) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the worker on SIGTERM
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ["BOTAI_STATE_DIR"] = str(tmp / "state")
    os.environ["BOTAI_MIN_FREE_DISK_GB"] = "0.1"
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL

    from bench.bench_latency import api_auth_env, prefect_server
    from bench.latency_job import latency_job
    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from core.schemas.training import TrainModelParams
    from core.settings import load_settings
    from deployments.services import jax_cache_env
    from flows.train_model import train_model
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.store import Store, connect
    from tests.ml.conftest import make_candles
    from tests.peers import create_process_deployment, create_process_pool

    mongo = start_embedded_mongo(tmp / "mongo")
    worker_proc = None
    try:
        store = Store(connect(mongo.uri), "bench")
        store.ensure_indexes()
        for i, s in enumerate(SYMBOLS):
            for tf in TIMEFRAMES:  # 760 bars: 31 days of 1h, 126 days of 4h
                frame = make_candles(760, seed=i, freq=tf)
                store.upsert_candles(s, tf, frame, source="synthetic")
        with (
            prefect_server(tmp),  # PostgreSQL when 127.0.0.1:5432 answers, as in production
            get_client(sync_client=True) as client,
        ):
            MongoDBBlock(uri=mongo.uri, database="bench").save("mongodb", overwrite=True)
            (tmp / "models").mkdir()
            ModelStoreBlock(directory=str(tmp / "models"), key=generate_model_key()).save(
                "model-store", overwrite=True
            )
            pool = "load-bench"
            create_process_pool(pool, {"ml_training": 2, "analysis": None})
            train_dep = create_process_deployment(
                train_model, "train-model", pool, "ml_training", "flows/train_model.py:train_model"
            )
            short_dep = create_process_deployment(
                latency_job, "latency-job", pool, "analysis", "bench/latency_job.py:latency_job"
            )
            env = {
                **os.environ,
                "PREFECT_API_URL": PREFECT_API_URL.value(),
                "PYTHONPATH": str(REPO),
                **api_auth_env(),
                # the stack's JAX compilation cache, as services.prefect_env sets it
                **jax_cache_env(load_settings()),
            }
            cmd = [sys.executable, "-m", "deployments.warm_worker", "--pool", pool]
            cmd += ["--preload", "bench.latency_job"]
            log = open(tmp / "worker.log", "w")  # noqa: SIM115
            worker_proc = subprocess.Popen(
                cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
            worker = psutil.Process(worker_proc.pid)
            t0 = time.monotonic()
            while not any(
                str(w.status).upper().endswith("ONLINE")
                for w in client.read_workers_for_work_pool(pool)
            ):
                if worker_proc.poll() is not None or time.monotonic() - t0 > 300:
                    raise SystemExit(f"warm worker did not come online; see {tmp / 'worker.log'}")
                time.sleep(0.5)
            print(f"worker online after {time.monotonic() - t0:.1f} s", flush=True)
            rss_idle, _ = worker_rss(worker, set())
            training_phase(
                gateway(store),
                client,
                train_dep,
                trainings,
                budget_s,
                worker,
                rss_idle,
                FlowRunFilter,
                FlowRunFilterId,
                TrainModelParams,
            )
            leak_phase(client, short_dep, short_runs, budget_s, worker)
    finally:
        if worker_proc is not None:
            worker_proc.terminate()
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
        mongo.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def gateway(store):  # noqa: ANN001, ANN201
    """The gateway app on this process's Prefect API and ``store``, and a token maker.

    Returns (TestClient, settings)."""
    import secrets

    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.settings import load_api_settings

    settings = load_api_settings(jwt_secret=secrets.token_urlsafe(48))
    return TestClient(create_app(settings, store_factory=lambda: store)), settings


def training_phase(
    gw,
    client,
    deployment_id,
    n,
    budget_s,
    worker,
    rss_idle,
    FlowRunFilter,
    FlowRunFilterId,
    TrainModelParams,
):  # noqa: ANN001, N803
    """TC-ASYNC-086/092: queue ``n`` trainings at once, sample every second."""
    # distinct (model, timeframe) per symbol: the gateway refuses (409) a training of a
    # model, symbol and timeframe that is already queued or running
    combos = [(m, tf) for m in ("lstm", "gru", "transformer") for tf in TIMEFRAMES]
    params = [
        TrainModelParams(
            model_type=combos[(i // len(SYMBOLS)) % len(combos)][0],
            timeframe=combos[(i // len(SYMBOLS)) % len(combos)][1],
            symbol=SYMBOLS[i % len(SYMBOLS)],
            epochs=10,
            days_of_data=DAYS[combos[(i // len(SYMBOLS)) % len(combos)][1]],
            batch_size=32,
            units=8,
            lookback=12,
            learning_rate=3e-3,
            requested_by="bench",
        )
        for i in range(n)
    ]
    from uuid import UUID

    from api.security import issue_token

    http, api_settings = gw
    per_user = api_settings.trainings_per_day
    t_queue = time.monotonic()
    ids: list[UUID] = []
    refused: list[str] = []
    queued: dict[str, float] = {}

    def submit_all() -> None:  # requests go out while the sampling below already runs
        for i, p in enumerate(params):
            user = f"operator{i // per_user:02d}"
            token = issue_token(api_settings, user, admin=True)
            body = p.model_dump(mode="json", exclude={"requested_by"})
            r = http.post(
                "/api/tasks/train", json=body, headers={"Authorization": f"Bearer {token}"}
            )
            if r.status_code == 202:
                ids.append(UUID(r.json()["task_id"]))
            else:
                refused.append(f"{r.status_code}: {r.json().get('error', '')[:80]}")
        queued["s"], queued["load"] = time.monotonic() - t_queue, os.getloadavg()[0]

    # the thread runs in this context: Prefect's settings (the bench server's API) live in it
    submitter = threading.Thread(
        target=contextvars.copy_context().run, args=(submit_all,), daemon=True
    )
    submitter.start()
    psutil.cpu_percent(None)
    max_running, cpu, loads, peak_worker, peak_run = 0, [], [], 0, 0
    final: dict = {}
    run_pids: set[int] = set()
    deadline = time.monotonic() + budget_s
    while time.monotonic() < deadline:
        known = list(ids)
        runs = (
            client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=known)), limit=len(known)
            )
            if known
            else []
        )
        states = {r.id: r.state.type.value for r in runs}
        running = [r for r in runs if states[r.id] == "RUNNING"]
        for r in runs:
            if r.infrastructure_pid and ":" in r.infrastructure_pid:
                run_pids.add(int(r.infrastructure_pid.rsplit(":", 1)[1]))
        max_running = max(max_running, len(running))
        w_rss, per_run = worker_rss(worker, run_pids)
        peak_worker = max(peak_worker, w_rss)
        peak_run = max([peak_run, *per_run.values()])
        cpu.append(psutil.cpu_percent(None))
        loads.append(os.getloadavg()[0])
        final = states
        if (
            not submitter.is_alive()
            and states
            and all(v in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for v in states.values())
        ):
            break
        time.sleep(1.0)
    print(
        f"requested {len(params)} trainings through the gateway in {queued.get('s', float('nan')):.1f} s "
        f"(while the first ones ran): {len(ids)} accepted (202), {len(refused)} refused "
        f"{refused[:3]} (load {queued.get('load', float('nan')):.1f})",
        flush=True,
    )
    n = len(ids)
    elapsed = time.monotonic() - t_queue
    counts: dict[str, int] = {}
    for v in final.values():
        counts[v] = counts.get(v, 0) + 1
    done = counts.get("COMPLETED", 0)
    busy = [c for c in cpu[1:]] or [0.0]
    print(
        f"\nTC-ASYNC-086: {n} trainings (10 epochs, {len(SYMBOLS)} symbols) queued at once: "
        f"{done}/{n} completed in {elapsed:.0f} s; states {counts}; "
        f"most Running at once {max_running} (limit 2: {'kept' if max_running <= 2 else 'BROKEN'})\n"
        f"  peak memory: worker (worker + fork server) {peak_worker / MB:.0f} MB (idle {rss_idle / MB:.0f} MB), "
        f"one training run {peak_run / MB:.0f} MB RSS (spec: < 8 GB per worker)\n"
        f"TC-ASYNC-092: CPU utilisation under that load mean {sum(busy) / len(busy):.0f} %, "
        f"max {max(busy):.0f} % ({psutil.cpu_count()} CPUs); load avg mean "
        f"{sum(loads) / max(1, len(loads)):.1f}, max {max(loads or [0]):.1f}",
        flush=True,
    )


def leak_phase(client, deployment_id, n, budget_s, worker):  # noqa: ANN001
    """TC-ASYNC-091: worker RSS after 10 and after ``n`` short runs."""
    rss_at: dict[int, float] = {}
    deadline = time.monotonic() + budget_s
    done = 0
    t0 = time.monotonic()
    for i in range(1, n + 1):
        run = client.create_flow_run_from_deployment(deployment_id, parameters={})
        while time.monotonic() < deadline:
            if client.read_flow_run(run.id).state.is_final():
                break
            time.sleep(0.1)
        else:
            break
        done = i
        if i in (10, n) or i % 50 == 0:
            time.sleep(0.5)
            rss_at[i] = worker_rss(worker, set())[0] / MB
            print(
                f"  after {i} short runs: worker RSS {rss_at[i]:.0f} MB (load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    if 10 in rss_at and n in rss_at:
        growth = 100 * (rss_at[n] - rss_at[10]) / rss_at[10]
        print(
            f"TC-ASYNC-091: worker RSS after 10 runs {rss_at[10]:.0f} MB, after {n} "
            f"{rss_at[n]:.0f} MB: {growth:+.1f} % ({'within' if abs(growth) <= 10 else 'OUTSIDE'} 10 %); "
            f"{n} runs in {time.monotonic() - t0:.0f} s (load {os.getloadavg()[0]:.1f})"
        )
    else:
        print(f"TC-ASYNC-091: only {done}/{n} short runs finished within {budget_s:.0f} s")


if __name__ == "__main__":
    args = [float(a) for a in sys.argv[1:]]
    main(*(int(a) for a in args[:2]), *args[2:3])
