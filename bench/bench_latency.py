"""Start latency of one short job: warm worker vs Prefect's stock process worker vs Celery.

Run: ``.venv/bin/python bench/bench_latency.py [runs] [budget_s]`` (default 20 runs per
path within 1800 s; when the budget ends first, the rounds done so far are reported).

The same short job (bench/latency_job.py: the indicator signal of one symbol, a few ms)
runs, in one bench run and interleaved (warm, stock, Celery, warm, ...) so that all three
see the same machine load:

* **warm**: the platform's worker (deployments/warm_worker.py: runs forked from a
  pre-imported parent, queues polled every 0.25 s);
* **stock**: ``prefect worker start --type process`` polling every 2 s (the platform's
  former worker and setting);
* **celery**: a Celery 5 worker (prefork, 1 child, acks_late) on this machine's RabbitMQ
  (127.0.0.1:5672) and Redis (127.0.0.1:6379).

Each job is requested on an idle worker (the previous one finished). Figures, from the
caller's send (the moment before the create request; Celery: before ``delay()``):
send -> Running (Prefect: the Running state's timestamp; Celery: the time the task body
began) and send -> Completed (Prefect: the Completed state's timestamp; Celery: the time
``result.get()`` returned); the second column, created -> Running, counts from the run's
creation time on the server instead (what the worker adds). p50/p95 in seconds, the load
average (1 min) sampled at each request beside every figure, and ratios against Celery and
the stock worker. Through the HTTP gateway (``POST /api/tasks/{job}``, JWT, quotas,
pre-checks), the same figures from the caller's send: ``bench/bench_gateway.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STOCK_QUERY_SECONDS = 2.0


def port_open(port: int) -> bool:
    """True when something listens on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def ensure_brokers() -> list[str]:
    """Check RabbitMQ (5672) and Redis (6379) answer; try to start them when not.

    Returns notes on what was started. Raises SystemExit when one stays down.
    """
    notes = []
    if not port_open(5672):
        subprocess.run(["service", "rabbitmq-server", "start"], capture_output=True, timeout=120)
        notes.append("started rabbitmq-server (service rabbitmq-server start)")
    if not port_open(6379):
        subprocess.run(["redis-server", "--daemonize", "yes"], capture_output=True, timeout=30)
        notes.append("started redis-server --daemonize yes")
    for port, name in ((5672, "RabbitMQ"), (6379, "Redis")):
        deadline = time.monotonic() + 60
        while not port_open(port) and time.monotonic() < deadline:
            time.sleep(1)
        if not port_open(port):
            raise SystemExit(f"{name} does not answer on 127.0.0.1:{port}")
    return notes


def pct(values: list[float], q: float) -> float:
    """The ``q`` percentile of ``values`` (linear interpolation)."""
    return float(np.percentile(np.asarray(values), q))


def wait_online(client, pool: str, proc: subprocess.Popen, timeout_s: float) -> float:  # noqa: ANN001
    """Wait for an online worker in ``pool``. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise SystemExit(f"worker for {pool} exited with {proc.returncode}")
        if any(
            str(w.status).upper().endswith("ONLINE")
            for w in client.read_workers_for_work_pool(pool)
        ):
            return time.monotonic() - t0
        time.sleep(0.3)
    raise SystemExit(f"no worker online in {pool} after {timeout_s} s")


def prefect_once(client, deployment_id, timeout_s: float = 600) -> tuple[float, float, float]:  # noqa: ANN001
    """Request one run and wait for its end.

    Returns (send->Running, send->Completed, created->Running): from the caller's send of
    the create request, and from the run's creation time on the server (what the worker
    adds).
    """
    t0 = time.time()
    run = client.create_flow_run_from_deployment(deployment_id, parameters={})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = client.read_flow_run(run.id).state
        if state.is_final():
            break
        time.sleep(0.05)
    else:
        raise SystemExit(f"run {run.id} did not finish in {timeout_s} s")
    if not state.is_completed():
        raise SystemExit(f"run {run.id} ended {state.type.value}: {state.message}")
    stamps = {s.type.value: s.timestamp.timestamp() for s in client.read_flow_run_states(run.id)}
    created = client.read_flow_run(run.id).created.timestamp()
    return stamps["RUNNING"] - t0, stamps["COMPLETED"] - t0, stamps["RUNNING"] - created


def celery_once(task) -> tuple[float, float, float]:  # noqa: ANN001
    """Send one task and wait for its result.

    Returns (send->start, send->result, sent->start): Celery has no creation time on a
    server, so the third figure is the first again.
    """
    t0 = time.time()
    res = task.delay()
    out = res.get(timeout=60)
    done = time.time()
    return out["started_at"] - t0, done - t0, out["started_at"] - t0


PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def start_warm_worker(pool: str, log_path: Path) -> subprocess.Popen:
    """Start the platform's warm worker for ``pool`` against the bench's Prefect server, as the
    stack starts it (the stack's auth string and JAX compilation cache), logging to
    ``log_path``. Returns the process (wait for it with :func:`wait_online`)."""
    from prefect.settings import PREFECT_API_URL

    from core.settings import load_settings
    from deployments.services import jax_cache_env

    env = {
        **os.environ,
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PYTHONPATH": str(REPO),
        **api_auth_env(),
        **jax_cache_env(load_settings()),
    }
    with open(log_path, "w") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "deployments.warm_worker", "--pool", pool],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def api_auth_env() -> dict[str, str]:
    """``PREFECT_API_AUTH_STRING`` of the current Prefect settings (the stack's server
    requires it), for the workers the bench starts; empty when the server needs none."""
    from prefect.settings import PREFECT_API_AUTH_STRING

    auth = PREFECT_API_AUTH_STRING.value()
    if auth is None:
        return {}
    value = auth.get_secret_value() if hasattr(auth, "get_secret_value") else str(auth)
    return {"PREFECT_API_AUTH_STRING": value}


@contextlib.contextmanager
def prefect_server(tmp: Path) -> Iterator[None]:
    """A Prefect server for the bench, the API of this process pointed at it.

    ``BENCH_PREFECT_DATABASE`` picks its database: ``postgresql`` (a fresh database on
    127.0.0.1:5432, dropped afterwards, as a production stack would run), ``sqlite`` (the
    stack's own server on SQLite in the state folder, as ``botai up`` runs by default) or
    ``auto`` (the default: PostgreSQL when it answers; else the SQLite test harness, which
    answered 503 "database is locked" under the load of this machine).
    """
    import asyncio
    import uuid

    from core.settings import load_settings
    from deployments import services
    from deployments.up import prefect_api
    from integrations.embedded_mongo import free_port

    choice = os.environ.get("BENCH_PREFECT_DATABASE", "auto")
    if choice not in ("auto", "postgresql", "sqlite"):
        raise SystemExit(f"BENCH_PREFECT_DATABASE={choice!r}: use auto, postgresql or sqlite")
    if choice == "auto" and not port_open(5432):
        from prefect.testing.utilities import prefect_test_harness

        with prefect_test_harness(server_startup_timeout=180):
            yield
        return
    import asyncpg

    async def pg(sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    name = f"bench_latency_{uuid.uuid4().hex[:8]}"
    database_url = None
    if choice != "sqlite":
        asyncio.run(pg(f'CREATE DATABASE "{name}"'))
        database_url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    settings = load_settings(
        state_dir=tmp / "state",
        prefect_port=free_port(),
        prefect_database_url=database_url,
        startup_timeout_s=300,
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env = services.prefect_env(settings, base)
    try:
        services.start_prefect_server(settings, env)
        where = f"PostgreSQL database {name}" if database_url else "SQLite in the state folder"
        print(f"Prefect server on {where}", flush=True)
        with prefect_api(settings):
            yield
    finally:
        services.stop_all(settings)
        if database_url:
            asyncio.run(pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main(runs: int = 20, budget_s: float = 1800) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up workers on SIGTERM
    notes = ensure_brokers()
    tmp = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    os.environ["PREFECT_HOME"] = str(tmp / "prefect")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    from bench.latency_celery import short_job_task
    from bench.latency_job import latency_job
    from tests.peers import create_process_deployment, create_process_pool

    procs: list[subprocess.Popen] = []
    samples: dict[str, list[tuple[float, float, float, float]]] = {
        "warm": [],
        "stock": [],
        "celery": [],
    }
    try:
        with (
            prefect_server(tmp),
            get_client(sync_client=True) as client,
        ):
            api = PREFECT_API_URL.value()
            env = {**os.environ, "PREFECT_API_URL": api, "PYTHONPATH": str(REPO)}
            env.update(api_auth_env())
            deployments = {}
            for kind in ("warm", "stock"):
                pool = f"latency-{kind}"
                create_process_pool(pool, {"jobs": None})
                deployments[kind] = create_process_deployment(
                    latency_job, f"latency-{kind}", pool, "jobs", "bench/latency_job.py:latency_job"
                )
            logs = tmp / "logs"
            logs.mkdir()
            warm_cmd = [sys.executable, "-m", "deployments.warm_worker", "--pool", "latency-warm"]
            warm_cmd += ["--preload", "bench.latency_job"]
            stock_cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool"]
            stock_cmd += ["latency-stock", "--type", "process"]
            celery_cmd = [sys.executable, "-m", "celery", "-A", "bench.latency_celery", "worker"]
            celery_cmd += ["--pool", "prefork", "-c", "1", "--loglevel", "WARNING"]
            for name, cmd, extra in (
                ("warm", warm_cmd, {}),
                ("stock", stock_cmd, {"PREFECT_WORKER_QUERY_SECONDS": f"{STOCK_QUERY_SECONDS:g}"}),
                ("celery", celery_cmd, {}),
            ):
                with open(logs / f"{name}.log", "w") as out:
                    procs.append(
                        subprocess.Popen(
                            cmd,
                            env={**env, **extra},
                            cwd=REPO,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
            wait_online(client, "latency-warm", procs[0], 300)
            wait_online(client, "latency-stock", procs[1], 300)
            short_job_task.delay().get(timeout=120)  # Celery worker up and connected
            # one unmeasured run each (first fork, first spawn, connections)
            prefect_once(client, deployments["warm"])
            prefect_once(client, deployments["stock"])
            paths: dict[str, Callable[[], tuple[float, float, float]]] = {
                "warm": lambda: prefect_once(client, deployments["warm"]),
                "stock": lambda: prefect_once(client, deployments["stock"]),
                "celery": lambda: celery_once(short_job_task),
            }
            deadline = time.monotonic() + budget_s
            for i in range(runs):
                if time.monotonic() > deadline:
                    notes.append(f"budget of {budget_s:.0f} s ended after {i} rounds")
                    break
                try:
                    for kind, once in paths.items():
                        load = os.getloadavg()[0]
                        running, completed, created_running = once()
                        samples[kind].append((running, completed, created_running, load))
                        time.sleep(0.3)  # the worker is idle again before the next request
                except SystemExit as e:  # one run failed or never finished: report the rest
                    notes.append(f"round {i + 1} stopped: {e}")
                    for rows in samples.values():
                        del rows[i:]
                    break
                print(f"  run {i + 1}/{runs} done, load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    report(samples, notes, len(samples["celery"]))


def report(
    samples: dict[str, list[tuple[float, float, float, float]]], notes: list[str], runs: int
) -> None:
    """Print p50/p95 per path with the load beside each figure, and the ratios."""
    cpus = os.cpu_count()
    print(
        f"\nStart latency of one short job, {runs} runs per path, {cpus} CPUs; " + "; ".join(notes)
    )
    stats = {}
    for kind, rows in samples.items():
        running = [r[0] for r in rows]
        completed = [r[1] for r in rows]
        created_running = [r[2] for r in rows]
        load = [r[3] for r in rows]
        stats[kind] = {
            "run50": pct(running, 50),
            "run95": pct(running, 95),
            "done50": pct(completed, 50),
            "done95": pct(completed, 95),
            "cr50": pct(created_running, 50),
            "cr95": pct(created_running, 95),
        }
        s = stats[kind]
        print(
            f"  {kind:6s} send->Running p50 {s['run50']:7.3f} s  p95 {s['run95']:7.3f} s | "
            f"send->Completed p50 {s['done50']:7.3f} s  p95 {s['done95']:7.3f} s | "
            f"created->Running p50 {s['cr50']:7.3f} s  p95 {s['cr95']:7.3f} s | "
            f"load avg {np.mean(load):.1f} (min {min(load):.1f}, max {max(load):.1f})"
        )
    w, st, c = stats["warm"], stats["stock"], stats["celery"]
    print(
        f"  ratios p50 Running: stock/warm {st['run50'] / w['run50']:.1f}x, "
        f"warm/celery {w['run50'] / c['run50']:.0f}x; p50 Completed: stock/warm "
        f"{st['done50'] / w['done50']:.1f}x, warm/celery {w['done50'] / c['done50']:.0f}x"
    )
    print(
        f"  targets: warm send->Running p95 <= 1 s: {'met' if w['run95'] <= 1 else 'NOT met'} "
        f"({w['run95']:.2f} s); short job send->Completed p95 <= 1.5 s: "
        f"{'met' if w['done95'] <= 1.5 else 'NOT met'} ({w['done95']:.2f} s)"
    )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]), *(float(a) for a in sys.argv[2:3]))
