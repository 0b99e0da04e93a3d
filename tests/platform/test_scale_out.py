"""Scale-out configuration: a Prefect server on PostgreSQL runs a flow; DASK_ADDRESS sends
a flow's tasks to an existing Dask cluster.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import load_settings
from deployments import services
from integrations.embedded_mongo import free_port

pytestmark = pytest.mark.tc("none")

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


async def _pg(dsn: str, sql: str, *args) -> list:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (dropped afterwards). Returns its name."""
    name = f"botai_prefect_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_pg(PG_ADMIN_DSN, f'CREATE DATABASE "{name}"'))
    except (OSError, ImportError) as e:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({e})")
    try:
        yield name
    finally:
        asyncio.run(_pg(PG_ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_prefect_server_on_postgres_runs_a_flow(pg_database: str, tmp_path: Path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    from deployments.up import prefect_api

    settings = load_settings(
        state_dir=tmp_path / "state",
        prefect_port=free_port(),
        prefect_database_url=f"postgresql+asyncpg://postgres@127.0.0.1:5432/{pg_database}",
    )
    env = services.prefect_env(
        settings, {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    )
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    try:
        services.start_prefect_server(settings, env)

        @flow(name="pg-smoke")
        def pg_smoke(x: int) -> int:
            return x * 2

        with prefect_api(settings):
            state = pg_smoke(21, return_state=True)
            assert state.is_completed() and state.result() == 42
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(state.state_details.flow_run_id)
            # send this process's queued logs/events now, while their server still runs
            APILogWorker.drain_all(timeout=10, at_exit=False)
            EventsWorker.drain_all(timeout=10, at_exit=False)
        assert run.state.is_completed()
        rows = asyncio.run(
            _pg(
                f"postgresql://postgres@127.0.0.1:5432/{pg_database}",
                "SELECT state_type FROM flow_run WHERE id = $1",
                run.id,
            )
        )
        assert [r["state_type"] for r in rows] == ["COMPLETED"]  # stored in PostgreSQL
        assert not (settings.prefect_home / "prefect.db").exists()  # not in SQLite
    finally:
        assert services.stop_all(settings) == ["prefect-server"]


def test_dask_address_runs_tasks_on_that_cluster(prefect_server: str):
    from distributed import LocalCluster, get_worker
    from prefect import flow, task

    from tasks.runners import dask_task_runner

    with LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        settings = load_settings(dask_address=cluster.scheduler_address)
        worker_addresses = set(cluster.scheduler_info["workers"])

        @task
        def where(i: int) -> tuple[int, str, int]:
            return os.getpid(), get_worker().address, i

        @flow(name="dask-address-smoke", task_runner=dask_task_runner(settings))
        def fan_out() -> list[tuple[int, str, int]]:
            return [f.result() for f in where.map([1, 2, 3])]

        results = fan_out()
    assert [r[2] for r in results] == [1, 2, 3]
    assert {r[1] for r in results} <= worker_addresses
    assert all(pid != os.getpid() for pid, _, _ in results)  # ran in the cluster's worker
