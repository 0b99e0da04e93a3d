"""Task runners for fan-out: an existing Dask cluster by address, else a local one."""

from __future__ import annotations

from prefect_dask import DaskTaskRunner

from core.settings import Settings


def dask_task_runner(settings: Settings, *, n_workers: int = 2) -> DaskTaskRunner:
    """Return a DaskTaskRunner for ``settings``.

    ``DASK_ADDRESS`` set: connect to that scheduler. Unset: start a local cluster of
    ``n_workers`` single-threaded processes for the life of the flow run. Each Prefect
    task on Dask costs about 150 ms of overhead, so callers submit coarse batches.
    """
    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
    )
