"""A real stack for the reliability tests on free ports in a temp state folder: nx-27017, the
Prefect server, the process work pool with the platform's queues, the heartbeat
crash-detection automation, a real process worker, the recovery service (``python -m
deployments.recovery``) and deployments of small jobs. Faults are injected by killing or
stopping these real processes (:class:`Stack` helpers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
from pytest_httpserver import HTTPServer

from core.settings import Settings, load_settings
from deployments import service_records, services, work_pool
from integrations.embedded_mongo import EmbeddedMongo, free_port, start_embedded_mongo
from integrations.store import Store, connect
from tests.peers import create_process_deployment

SLACK_PATH = "/hooks/reliability"

#: Recovery settings of the test stack: fast passes and backoff, the platform's cap (3).
RECOVERY_ENV = {
    "BOTAI_RECOVERY_POLL_S": "1",
    "BOTAI_RECOVERY_BACKOFF_S": "2",
    "BOTAI_RECOVERY_BACKOFF_MAX_S": "4",
    "BOTAI_RECOVERY_EXIT_GRACE_S": "3",
    "BOTAI_RECOVERY_START_GRACE_S": "20",
    "BOTAI_RECOVERY_MAX_ATTEMPTS": "3",
    "BOTAI_HEARTBEAT_S": "30",
    "BOTAI_CRASH_AFTER_S": "60",
    "BOTAI_RECOVERY_HUNG_AFTER_S": "15",
    "BOTAI_RECOVERY_PENDING_MAX_S": "40",
    "BOTAI_RECOVERY_HEARTBEAT_STALE_S": "60",
    "BOTAI_WORKER_QUERY_SECONDS": "1",
    "BOTAI_MIN_FREE_DISK_GB": "0.1",
}


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.5) -> Any:
    """Poll ``predicate`` until it returns something truthy. Returns that value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Stack:
    """The running stack and the handles the tests kill and restart."""

    settings: Settings
    env: dict[str, str]
    mongo: EmbeddedMongo
    store: Store
    slack: HTTPServer
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    deployments: dict[str, UUID] = field(default_factory=dict)

    # ------------------------------------------------------------ processes
    def start_server(self) -> float:
        """Start the Prefect server (same port and database). Returns seconds to healthy."""
        started = time.monotonic()
        self.procs["server"] = services.start_prefect_server(self.settings, self.env)
        return time.monotonic() - started

    def start_worker(self) -> None:
        self.procs["worker"] = services.start_worker(self.settings, self.env)
        services.wait_worker_online(self.settings, self.procs["worker"], 60)

    def start_recovery(self) -> None:
        self.procs["recovery"] = services.spawn(
            "recovery", [sys.executable, "-m", "deployments.recovery"], self.env, self.settings
        )

    def kill(self, name: str) -> None:
        """kill -9 the service ``name`` (server, worker, recovery) and reap it."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(10)

    def flow_processes(self, run_id: UUID | str) -> list[psutil.Process]:
        """Live processes of a flow run (the worker's supervisor and its engine child)."""
        from prefect.client.orchestration import get_client

        from deployments.run_processes import local_flow_processes, processes_of

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(str(run_id)))
        return processes_of(run, local_flow_processes())

    def engine_process(self, run_id: UUID | str) -> psutil.Process:
        """The process executing the flow body (the innermost of the run's processes)."""
        procs = self.flow_processes(run_id)
        pids = {p.pid for p in procs}
        leaves = [p for p in procs if not any(c.pid in pids for c in p.children())]
        assert leaves, f"no process of run {run_id}"
        return leaves[0]

    # ------------------------------------------------------------ Prefect
    def run(self, deployment: str, parameters: dict[str, Any] | None = None) -> UUID:
        """Create a run of one of the stack's deployments. Returns its id."""
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.create_flow_run_from_deployment(
                self.deployments[deployment], parameters=parameters or {}
            ).id

    def read(self, run_id: UUID | str) -> Any:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.read_flow_run(UUID(str(run_id)))

    def states(self, run_id: UUID | str) -> list[Any]:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            return client.read_flow_run_states(UUID(str(run_id)))

    def wait_state(self, run_id: UUID | str, names: set[str], timeout_s: float) -> Any:
        """Wait until the run's state name is in ``names``. Returns the run."""

        def reached() -> Any:
            run = self.read(run_id)
            return run if run.state and run.state.name in names else None

        return wait_for(reached, timeout_s, f"run {run_id} to reach {sorted(names)}")

    def executions(self, run_id: UUID | str) -> list[dict]:
        from tests.reliability.jobs import EXECUTIONS

        return list(self.store.col(EXECUTIONS).find({"task_id": str(run_id)}, {"_id": 0}))


def _deploy(stack: Stack) -> None:
    from flows.train_model import train_model
    from tests.reliability import jobs

    pool = stack.settings.work_pool
    for flow, queue, entry in (
        (train_model, "ml_training", "flows/train_model.py:train_model"),
        (jobs.count_work, "analysis", "tests/reliability/jobs.py:count_work"),
        (jobs.crash_always, "analysis", "tests/reliability/jobs.py:crash_always"),
        (jobs.fail_retryable, "analysis", "tests/reliability/jobs.py:fail_retryable"),
        (jobs.fail_bad_input, "analysis", "tests/reliability/jobs.py:fail_bad_input"),
    ):
        stack.deployments[flow.name] = create_process_deployment(
            flow, flow.name, pool, queue, entry
        )


def _load_candles(store: Store) -> None:
    from datetime import UTC, datetime, timedelta

    from integrations.market_data.synthetic import synthetic_range

    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    frame = synthetic_range("BTCUSDT", "1h", end - timedelta(days=40), end, seed=3)
    store.upsert_candles("BTCUSDT", "1h", frame, source="synthetic")


@contextlib.contextmanager
def running_stack(state: Path) -> Iterator[Stack]:
    """The whole stack (see the module doc) in the state folder ``state``; every process is
    stopped at the end. Yields the :class:`Stack`."""
    from blocks.model_store import ModelStoreBlock, generate_model_key
    from blocks.mongodb import MongoDBBlock
    from blocks.slack import SlackBlock
    from deployments.automations import ensure_crash_detection
    from deployments.up import prefect_api

    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BOTAI_", "MONGODB_", "DASK_"))
    }
    base.update(RECOVERY_ENV, BOTAI_WORK_POOL="rel-pool", MONGODB_DATABASE="rel")
    settings = load_settings(
        state_dir=state,
        prefect_port=free_port(),
        mongodb_port=free_port(),
        work_pool="rel-pool",
        mongodb_database="rel",
        **{k.removeprefix("BOTAI_").lower(): v for k, v in RECOVERY_ENV.items()},
    )
    env = services.prefect_env(settings, base)
    mongo = start_embedded_mongo(settings.mongodb_dir, port=settings.mongodb_port)
    client = connect(mongo.uri)
    store = Store(client, settings.mongodb_database)
    store.ensure_indexes()
    slack = HTTPServer(host="127.0.0.1", port=0, threaded=True)
    slack.start()
    slack.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    stack = Stack(settings, env, mongo, store, slack)
    try:
        stack.start_server()
        with prefect_api(settings):
            MongoDBBlock(uri=mongo.uri, database=settings.mongodb_database).save(
                "mongodb", overwrite=True
            )
            (settings.model_dir).mkdir(parents=True, exist_ok=True)
            ModelStoreBlock(directory=str(settings.model_dir), key=generate_model_key()).save(
                "model-store", overwrite=True
            )
            SlackBlock(webhook_url=slack.url_for(SLACK_PATH), channel="#alerts").save(
                "slack", overwrite=True
            )
            work_pool.ensure_work_pool(settings)
            ensure_crash_detection(settings)
            _deploy(stack)
            _load_candles(store)
            stack.start_worker()
            stack.start_recovery()
            yield stack
    finally:
        for rec in service_records.read_records(settings):  # flow runs too: stop their groups
            with contextlib.suppress(psutil.Error):
                for p in psutil.Process(rec.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        p.send_signal(signal.SIGCONT)
        services.stop_all(settings, timeout_s=10)
        for procs in _orphans(state).values():
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        slack.clear()
        slack.stop()
        client.close()
        stack.mongo.stop()  # the one running now (a test may have restarted it)


def _orphans(state: Path) -> dict[str, list[psutil.Process]]:
    """Flow-run processes of this stack still alive (their environment names its state dir)."""
    from deployments.run_processes import local_flow_processes

    out = {}
    for run_id, procs in local_flow_processes().items():
        mine = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if p.environ().get("BOTAI_STATE_DIR") == str(state):
                    mine.append(p)
        if mine:
            out[run_id] = mine
    return out
