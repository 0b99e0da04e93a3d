"""A long-lived local Dask cluster, started once with the stack (service name ``dask``).

Fan-out only pays on a cluster whose workers are already running and have imported the
task code: a ``LocalCluster`` started inside a flow run made bulk-analysis 2x slower than
one process. The supervisor starts :func:`dask_command` and gives the worker
``DASK_ADDRESS`` (:func:`dask_address`); flows then connect instead of starting a cluster.

Run: ``python -m deployments.dask_service --address tcp://127.0.0.1:8786 --workers 2``
(stops on SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from urllib.parse import urlsplit

#: Address of the stack's Dask scheduler when DASK_ADDRESS is not set.
DEFAULT_DASK_ADDRESS = "tcp://127.0.0.1:8786"


def dask_address(settings: object) -> str:
    """``settings.dask_address`` when set, else :data:`DEFAULT_DASK_ADDRESS`."""
    return getattr(settings, "dask_address", None) or DEFAULT_DASK_ADDRESS


def dask_command(settings: object, *, workers: int = 2) -> list[str]:
    """The command line of the stack's Dask service: a scheduler on :func:`dask_address`
    and ``workers`` single-threaded worker processes (PYTHONPATH from the environment
    the supervisor gives, so workers import the platform's tasks)."""
    return [
        sys.executable,
        "-m",
        "deployments.dask_service",
        "--address",
        dask_address(settings),
        "--workers",
        str(workers),
    ]


def main(argv: list[str] | None = None) -> None:
    """Start the cluster and block until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m deployments.dask_service")
    parser.add_argument("--address", default=DEFAULT_DASK_ADDRESS)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    url = urlsplit(args.address)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        parser.error(f"--address must look like tcp://127.0.0.1:8786, got {args.address!r}")

    from distributed import LocalCluster

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with LocalCluster(
        host=url.hostname,
        scheduler_port=url.port,
        n_workers=args.workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
    ):
        stop.wait()


if __name__ == "__main__":
    main()
