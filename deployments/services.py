"""Start and stop the platform's processes: Prefect server, embedded store, process worker.

Every child runs in its own process group (session) and is recorded in
``<state_dir>/run/services.json`` (pid, start time, command line:
:mod:`deployments.service_records`), so a separate ``botai down`` finds it. Stopping sends SIGTERM to the group and to every descendant seen
at that moment (flow runs started by the worker live in groups of their own), waits, then
SIGKILLs whatever is left. Readiness is waited on (HTTP health, MongoDB ping), never slept.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import psutil

from core.environment import REPO_ROOT
from core.exceptions import ConfigurationError, ServiceUnavailableError
from core.settings import Settings
from deployments import secrets
from deployments.process_groups import descendants, kill_group, signal_all, wait_gone
from deployments.service_records import (
    CONTROLLER,
    ServiceRecord,
    pid_file,
    read_records,
    record_alive,
    record_service,
    run_dir,
)
from integrations.embedded_mongo import port_in_use, start_embedded_mongo

log = logging.getLogger(__name__)


def prefect_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every child: Prefect home/API in the state folder, BOTAI_* settings.

    Returns a new dict: ``base`` (default ``os.environ``) without its secrets
    (:func:`deployments.secrets.without_secrets`) plus the Prefect and platform variables the
    server, the worker and the flow runs need, the Prefect API auth string included.
    """
    env = secrets.without_secrets(os.environ if base is None else base)
    env.update(
        {
            "PREFECT_HOME": str(settings.prefect_home),
            # this stack's profile, never the one a prefect.toml in the cwd points at
            "PREFECT_PROFILES_PATH": str(settings.prefect_home / "profiles.toml"),
            "PREFECT_API_URL": settings.prefect_api_url,
            "PREFECT_SERVER_API_HOST": settings.host,
            "PREFECT_SERVER_API_PORT": str(settings.prefect_port),
            "PREFECT_UI_API_URL": settings.prefect_api_url,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": f"{settings.worker_query_seconds:g}",
            "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": (
                f"{settings.concurrency_slot_wait_s:g}"
            ),
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.heartbeat_s),
            # the supervisor's watchdog judges the worker by this heartbeat (TC-ASYNC-102)
            "PREFECT_WORKER_HEARTBEAT_SECONDS": f"{settings.worker_heartbeat_s:g}",
            # Prefect's own database keeps finished flow runs as long as the results
            # (TC-ASYNC-093): the db-vacuum service deletes older ones, their logs and artifacts
            "PREFECT_SERVER_SERVICES_DB_VACUUM_ENABLED": "events,flow_runs",
            "PREFECT_SERVER_SERVICES_DB_VACUUM_RETENTION_PERIOD": (
                f"{settings.run_retention_days * 86400:.0f}"
            ),
            "PREFECT_SERVER_SERVICES_DB_VACUUM_LOOP_SECONDS": f"{settings.cleanup_interval_s:g}",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": prefect_database_url(settings),
            # flow results persisted as JSON for prefect CLI users, task values not (tasks/results.py)
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
            "PREFECT_TASKS_DEFAULT_PERSIST_RESULT": "false",
            "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
            "BOTAI_REPO_ROOT": str(REPO_ROOT),
            "BOTAI_STATE_DIR": str(settings.state_dir),
            "BOTAI_HOST": settings.host,
            "BOTAI_PREFECT_PORT": str(settings.prefect_port),
            "BOTAI_MONGODB_PORT": str(settings.mongodb_port),
            "MONGODB_DATABASE": settings.mongodb_database,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
            ),
        }
    )
    if settings.dask_address:
        env["DASK_ADDRESS"] = settings.dask_address
    env.setdefault("KERAS_BACKEND", "jax")
    # concurrency leases in files of the state folder: a server kill -9 keeps them, so
    # training slots are freed by their leases, never leaked (deployments/recovery_slots.py);
    # a lease storage given by the environment (prefect-redis in the HA setup) is kept
    env.setdefault(
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE",
        "prefect.server.concurrency.lease_storage.filesystem",
    )
    env.update(jax_cache_env(settings))
    env.update(secrets.client_env(settings))
    return env


def jax_cache_env(settings: Settings) -> dict[str, str]:
    """JAX's persistent compilation cache in ``<state_dir>/jax-cache``, for every program.

    A run's process is forked before JAX exists (deployments/fork_server.py), so each run
    compiled again what loading and running a model needs: 1.5-2.5 s of predict-price's
    flow on this machine. With the cache a later run reads the compiled program from disk
    (measured: loading a small GRU 1.15 s -> 0.3 s, its first predict 0.15 s -> 0.04 s).
    One entry per distinct program (model architecture and input shape): a few MB for the
    platform's models; deleting the folder only costs the next runs their compile time.
    """
    return {
        "JAX_COMPILATION_CACHE_DIR": str(settings.state_dir / "jax-cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def prefect_database_url(settings: Settings) -> str:
    """``Settings.prefect_database_url`` when set, else SQLite in ``<state_dir>/prefect``."""
    if settings.prefect_database_url:
        return settings.prefect_database_url
    return f"sqlite+aiosqlite:///{settings.prefect_home / 'prefect.db'}"


def spawn(
    name: str, cmd: list[str], env: Mapping[str, str], settings: Settings, *, cwd: Path = REPO_ROOT
) -> subprocess.Popen:
    """Start ``cmd`` in a new process group, output appended to ``<state_dir>/run/<name>.log``.

    Returns the child (already recorded in the pid file).
    """
    log_path = run_dir(settings) / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            env=dict(env),
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record_service(settings, name, proc.pid, log_path)
    log.info("started %s (pid %d), log %s", name, proc.pid, log_path)
    return proc


def prefect_cmd(*args: str) -> list[str]:
    """``python -m prefect <args>`` with this interpreter."""
    return [sys.executable, "-m", "prefect", *args]


def wait_http_ok(
    url: str,
    timeout_s: float,
    *,
    proc: subprocess.Popen | None = None,
    what: str = "service",
    any_status: bool = False,
) -> float:
    """Poll ``url`` until it answers 2xx (``any_status``: any HTTP answer at all).

    Returns the seconds waited.

    Raises:
        ServiceUnavailableError: ``proc`` exited, or no 2xx within ``timeout_s``.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    with httpx.Client(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                raise ServiceUnavailableError(f"{what} exited with code {proc.returncode}")
            try:
                resp = client.get(url)
                if resp.is_success or (any_status and resp.status_code < 600):
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
    raise ServiceUnavailableError(f"{what} did not answer {url} within {timeout_s:.0f} s")


def start_prefect_server(settings: Settings, env: Mapping[str, str]) -> subprocess.Popen:
    """Start the Prefect server (Prefect's app as ``prefect server start`` serves it, see
    :mod:`deployments.prefect_server`) on ``settings.host:prefect_port``; wait for its health.

    The database is SQLite in ``<state_dir>/prefect`` or ``Settings.prefect_database_url``.

    Returns the server process.

    Raises:
        ConfigurationError: the port is taken (says which variable to set).
        ServiceUnavailableError: the server exited or was not healthy in time (see its log).
    """
    if port_in_use(settings.host, settings.prefect_port):
        raise ConfigurationError(
            f"port {settings.prefect_port} on {settings.host} is already in use: stop what runs "
            "there (`botai down`) or set BOTAI_PREFECT_PORT"
        )
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    # Prefect's server app behind a replay of database-busy 503s (deployments.prefect_server)
    cmd = [sys.executable, "-m", "deployments.prefect_server", "--host", settings.host]
    cmd += ["--port", str(settings.prefect_port)]
    server_env = {**env, **secrets.server_env(settings, prefect_database_url(settings))}
    proc = spawn("prefect-server", cmd, server_env, settings)
    try:
        waited = wait_http_ok(
            f"{settings.prefect_api_url}/health",
            settings.startup_timeout_s,
            proc=proc,
            what="Prefect server",
        )
    except ServiceUnavailableError as e:
        kill_group(proc)  # never leave a half-started server holding the port
        raise ServiceUnavailableError(
            f"{e}; see {run_dir(settings) / 'prefect-server.log'}"
        ) from None
    log.info("Prefect server healthy after %.1f s at %s", waited, settings.prefect_ui_url)
    return proc


def start_store(settings: Settings) -> str:
    """Start the embedded nx-27017 store unless ``MONGODB_URI`` is set.

    Returns the MongoDB URI the platform uses.

    Raises:
        ConfigurationError: the port is taken. ServiceUnavailableError: no ping in time.
    """
    if settings.mongodb_uri:
        log.info("MONGODB_URI is set: not starting the embedded store")
        return settings.mongodb_uri
    start_store_process(settings)
    return settings.embedded_mongodb_uri


def start_store_process(settings: Settings) -> subprocess.Popen:
    """Start nx-27017 on ``settings.mongodb_port`` and its data folder, wait for its ping and
    record it as ``nx-27017``. Returns the process.

    Raises:
        ConfigurationError: the port is taken. ServiceUnavailableError: no ping in time.
    """
    server = start_embedded_mongo(
        settings.mongodb_dir,
        host=settings.host,
        port=settings.mongodb_port,
        timeout_s=settings.startup_timeout_s,
        env=secrets.store_env(os.environ),
    )
    record_service(settings, "nx-27017", server.process.pid, server.log_path)
    return server.process


def worker_name(settings: Settings) -> str:
    """Name of this host's worker in its pool: ``botai-worker-<host name>-<port>``, unique per
    host (workers of several hosts keep heartbeats of their own) and the same after a restart
    (its heartbeat record is found again)."""
    return f"botai-worker-{settings.host_name}-{settings.prefect_port}"


def worker_command(settings: Settings) -> list[str]:
    """The worker's command line: the warm process worker (deployments/warm_worker.py;
    each run in its own process, forked from a pre-imported parent) serving every queue
    of ``settings.work_pool`` (only ``settings.worker_queues`` when set)."""
    from deployments.warm_worker import worker_command as warm_worker_command

    queues = [arg for q in settings.worker_queues or [] for arg in ("--queue", q)]
    return [*warm_worker_command(settings), "--name", worker_name(settings), *queues]


def start_worker(settings: Settings, env: Mapping[str, str]) -> subprocess.Popen:
    """Start the worker (:func:`worker_command`) serving every queue of the pool.

    Returns the worker process (its readiness shows as the pool's worker heartbeat).
    """
    return spawn("prefect-worker", worker_command(settings), env, settings)


def wait_worker_online(settings: Settings, proc: subprocess.Popen, timeout_s: float) -> float:
    """Wait until the pool lists an online worker. Returns the seconds waited.

    Raises:
        ServiceUnavailableError: the worker exited or did not report in time.
    """
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while time.monotonic() - started < timeout_s:
            if proc.poll() is not None:
                raise ServiceUnavailableError(
                    f"worker exited with code {proc.returncode}; see "
                    f"{run_dir(settings) / 'prefect-worker.log'}"
                )
            workers = client.read_workers_for_work_pool(settings.work_pool)
            if any(str(w.status).upper().endswith("ONLINE") for w in workers):
                return time.monotonic() - started
            time.sleep(0.5)
    raise ServiceUnavailableError(f"no worker of pool {settings.work_pool} within {timeout_s} s")


def stop_records(records: list[ServiceRecord], timeout_s: float = 20.0) -> list[str]:
    """Stop the recorded processes, their groups and descendants (SIGTERM, then SIGKILL).

    Records are stopped in reverse start order (worker and its flow runs first, the
    store last); the calling process itself is never signalled. Returns the names of the
    services that were still running.
    """
    stopped: list[str] = []
    for rec in reversed(records):
        if rec.pid == os.getpid() or not record_alive(rec):
            continue
        stopped.append(rec.name)
        procs = [psutil.Process(rec.pid), *descendants(rec.pid)]
        signal_all(procs, rec.pid, signal.SIGTERM)
        alive = wait_gone(procs, timeout_s)
        if alive:
            log.warning("%s: %d process(es) ignored SIGTERM; killing", rec.name, len(alive))
            signal_all(alive, rec.pid, signal.SIGKILL)
            wait_gone(alive, 5.0)
        log.info("stopped %s (pid %d)", rec.name, rec.pid)
    return stopped


def stop_all(settings: Settings, timeout_s: float = 20.0, *, owner: int | None = None) -> list[str]:
    """Stop every process recorded in the state folder and clear the pid file.

    A running ``botai up`` (recorded as :data:`CONTROLLER`) gets SIGTERM first and stops
    its own children; whatever still runs after it exited is stopped here. ``owner``
    limits the stop to the processes recorded by that pid (``botai up`` stopping its own,
    never a newer stack's on the same folder).

    Returns the names of the recorded processes that were running.
    """
    all_records = read_records(settings)
    records = [r for r in all_records if owner is None or r.owner == owner]
    running = [r.name for r in records if r.pid != os.getpid() and record_alive(r)]
    for rec in records:
        if rec.name == CONTROLLER and rec.pid != os.getpid() and record_alive(rec):
            controller = psutil.Process(rec.pid)
            with contextlib.suppress(psutil.Error):
                controller.send_signal(signal.SIGTERM)
            if wait_gone([controller], timeout_s * 4):
                log.warning("botai up (pid %d) did not exit; stopping its services", rec.pid)
    stop_records([r for r in records if r.name != CONTROLLER], timeout_s)
    # flow runs of a worker that died earlier were reparented: no record leads to them
    from deployments.orphans import end_processes, flow_run_processes

    orphans = flow_run_processes(settings)
    if orphans:
        log.warning("stopping %d orphaned flow-run process(es)", len(orphans))
        end_processes([p for p, _ in orphans.values()], timeout_s)
    if all(r in records or not record_alive(r) for r in all_records):
        pid_file(settings).unlink(missing_ok=True)
    return running
