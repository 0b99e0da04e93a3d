"""Warm process worker: each flow run in its own process, forked from a pre-imported parent.

Prefect's stock process worker starts every flow run as ``python -m prefect.engine``: a
new interpreter that imports Prefect, pandas and the flow's modules again (6-14 s on the
platform's 2 shared cores). This worker keeps everything else of the stock worker (same
pool type ``process`` and base job template, same polling, Pending proposal, concurrency
limits, cancellation observer and control channel, crash reporting) and replaces only how
the process is started:

* a **fork server** (``multiprocessing``'s ``forkserver``: a separate, single-threaded
  interpreter started once by the worker) imports Prefect, pandas, numpy, pydantic and
  every ``flows.*`` module, and then forks one child per flow run. The fork happens before
  any JAX computation, Dask cluster or Prefect client exists in the parent (it runs none),
  and never from the worker itself (which runs an event loop and threads);
* the child sets the run's environment (``PREFECT__FLOW_RUN_ID``, control-channel port and
  token, the job's env), refreshes Prefect's settings from it and runs the engine entry
  point (``python -m prefect.engine``'s ``__main__``) in-process.

What a process per run gives is kept: each run is its own process (its own pid, recorded
as the flow run's ``infrastructure_pid`` as ``host:pid``), so a crash or ``kill -9`` of one
run takes no other run down (the worker reports it Crashed), cancellation is Prefect's
(SIGTERM to that pid, then SIGKILL) and the run's memory is returned to the OS when it
exits. If the fork server dies, the next run starts a new one. Runs re-run under the same
flow-run id (crash recovery) are picked up like any scheduled run.

Pickup: the worker polls its queues at once when the server streams a
``prefect.flow-run.Scheduled`` event of its pool (deployments/wakeup.py), and every
``--query-seconds`` (default :data:`WARM_QUERY_SECONDS`) instead of the stock 2-10 s, one
cheap API call per poll; the poll alone picks runs up when events are unavailable.

Metrics: with ``BOTAI_WORKER_METRICS_PORT`` set the worker serves ``/metrics`` for Prometheus
(runs it started, its fork server and flow-run processes; deployments/worker_metrics.py).

Run: ``python -m deployments.warm_worker --pool botai-process`` (see :func:`worker_command`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deployments.fork_server import (  # noqa: F401 (_noop, _run_flow_run: see below)
    ForkStarter,
    _noop,
    _run_flow_run,
    code_fingerprint,
    fork_context,
    preload_modules,
    preloaded_entrypoint,
    restart_fork_server,
    settings_env,
    warm_up,
)
from deployments.start_guard import requeued_since
from deployments.wakeup import ScheduledRunWaker

if TYPE_CHECKING:
    from core.settings import Settings

# _noop and _run_flow_run are importable from here too: a fork server started by a worker
# of the previous layout (targets pickled as deployments.warm_worker.*) keeps working.

#: Seconds between two polls of the pool's queues by the warm worker.
WARM_QUERY_SECONDS = 0.25

#: Seconds a deployment's entrypoint and pull steps are reused without reading them again.
DEPLOYMENT_CACHE_S = 30.0


class _HostPidStatus:
    """Passes ``host:pid`` on to the worker when the stock starter reports a bare pid."""

    def __init__(self, inner: Any, host: str) -> None:
        self._inner, self._host = inner, host

    def started(self, value: Any = None) -> None:
        self._inner.started(f"{self._host}:{value}")


def _worker_class() -> type:
    """Build the worker class (Prefect imported only when a worker is made)."""
    import warnings

    import anyio
    from prefect.flows import load_flow_from_flow_run
    from prefect.runner._flow_run_executor import FlowRunExecutorContext
    from prefect.workers.process import (
        ProcessJobConfiguration,
        ProcessWorker,
        ProcessWorkerResult,
    )

    warnings.filterwarnings(  # this class replaces ProcessWorker in this process only
        "ignore", message=".*matches existing registered type", category=UserWarning
    )

    class WarmProcessWorker(ProcessWorker):
        """Process worker whose runs are forked from a pre-imported fork server."""

        type = "process"  # same pool type and job template as the stock worker
        _description = "Runs each flow run in its own process, forked from a warm parent."
        _display_name = "Warm process"

        def __init__(
            self,
            *args: Any,
            preload: list[str] | None = None,
            code_root: Path | None = None,
            metrics: Any = None,
            host_name: str | None = None,
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self._metrics = metrics  # deployments.worker_metrics.WorkerMetrics, or None
            self._preload = preload if preload is not None else preload_modules()
            self._fork_ctx = fork_context(self._preload)
            self._hostname = host_name or socket.gethostname()  # host:pid of its runs
            self._code_root = code_root or Path(__file__).resolve().parent.parent
            self._fingerprint: tuple = ()
            self._in_flight = 0
            self._deployments: dict[Any, tuple[float, str | None, Any]] = {}
            self._restart_lock = anyio.Lock()

        async def __aenter__(self) -> WarmProcessWorker:
            self._fingerprint = code_fingerprint(self._code_root)
            # the fork server imports Prefect with the settings every job env will carry
            # (Prefect writes them into each job's env), so a run need not rebuild them
            os.environ.update(settings_env())
            await anyio.to_thread.run_sync(warm_up, self._fork_ctx)
            await super().__aenter__()
            # one executor context for the worker's life (as Prefect's Runner keeps one):
            # its API client, control channel and cancellation observer serve every run
            self._exec_ctx = FlowRunExecutorContext()
            await self._exec_ctx.__aenter__()
            # pickup on event: a run scheduled on this pool is polled for at once
            self._waker = ScheduledRunWaker(
                self.get_and_submit_flow_runs,
                lambda: str(self._work_pool.id) if self._work_pool else None,
                self._logger,
            )
            self._waker.start()
            return self

        async def __aexit__(self, *exc_info: Any) -> None:
            try:
                await self._waker.stop()
                await super().__aexit__(*exc_info)
            finally:
                await self._exec_ctx.__aexit__(None, None, None)

        async def _propose_crashed_state(
            self, flow_run: Any, message: str, client: Any = None
        ) -> None:
            """Report a crash of the attempt this worker started, unless the run was queued
            again since (recovery re-queues a Crashed run after a short backoff; a report
            that comes later would crash the next attempt before it ran)."""
            try:
                states = await (client or self.client).read_flow_run_states(flow_run.id)
            except Exception:  # noqa: BLE001 - report as the stock worker does
                states = []
            if requeued_since(states, flow_run.state):
                self._logger.info(
                    "run %s was queued again: its old crash not reported", flow_run.id
                )
                return
            await super()._propose_crashed_state(flow_run, message, client)

        async def _fork_server_current(self) -> bool:
            """True when the fork server holds the code on disk now. A change restarts
            the server when no run is in flight; with runs in flight returns False (the
            run then starts the stock way, from a fresh interpreter)."""
            fingerprint = await anyio.to_thread.run_sync(code_fingerprint, self._code_root)
            if fingerprint == self._fingerprint:
                return True
            async with self._restart_lock:
                if self._in_flight > 1:
                    return False
                self._logger.info("code changed on disk: restarting the fork server")
                await anyio.to_thread.run_sync(restart_fork_server, self._fork_ctx)
                self._fingerprint = fingerprint
            return True

        async def _entrypoint(self, flow_run: Any, env: dict[str, str | None]) -> Any:
            if not flow_run.deployment_id:
                return None
            cached = self._deployments.get(flow_run.deployment_id)
            if cached is None or time.monotonic() - cached[0] > DEPLOYMENT_CACHE_S:
                try:
                    deployment = await self.client.read_deployment(flow_run.deployment_id)
                except Exception:  # the child then loads the flow the stock way
                    self._logger.warning("could not read deployment of %s", flow_run.id)
                    return None
                cached = (time.monotonic(), deployment.entrypoint, deployment.pull_steps)
                self._deployments[flow_run.deployment_id] = cached
            return preloaded_entrypoint(cached[1], cached[2], env, set(self._preload))

        async def run(
            self,
            flow_run: Any,
            configuration: ProcessJobConfiguration,
            task_status: Any = None,
        ) -> ProcessWorkerResult:
            if task_status is None:
                task_status = anyio.TASK_STATUS_IGNORED
            self._in_flight += 1
            if self._metrics is not None:
                self._metrics.run_started()
            ok = False
            try:
                if not await self._fork_server_current():
                    if not configuration._command_configured:  # the start guard first
                        configuration.command = f"{sys.executable} -m deployments.start_guard"
                        configuration._command_configured = True
                    result = await super().run(
                        flow_run, configuration, _HostPidStatus(task_status, self._hostname)
                    )
                else:
                    result = await self._run_forked(flow_run, configuration, task_status)
                ok = result.status_code == 0
                return result
            finally:
                self._in_flight -= 1
                if self._metrics is not None:
                    self._metrics.run_finished(ok)

        async def _run_forked(
            self, flow_run: Any, configuration: ProcessJobConfiguration, task_status: Any
        ) -> ProcessWorkerResult:
            plan = await self._entrypoint(flow_run, configuration.env)
            working_dir_ctx = (
                tempfile.TemporaryDirectory(suffix="prefect")
                if not configuration.working_dir
                else contextlib.nullcontext(configuration.working_dir)
            )
            execution = None
            with working_dir_ctx as working_dir, warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                ctx = self._exec_ctx
                starter = ForkStarter(
                    self._fork_ctx,
                    cwd=plan[0] if plan else Path(working_dir).resolve(),
                    env=dict(configuration.env),
                    control_channel=ctx.control_channel,
                    entrypoint=plan[1] if plan else None,
                )
                executor = ctx.create_executor(
                    flow_run,
                    starter,
                    resolve_flow=load_flow_from_flow_run,
                    propose_submitting=False,
                )

                async def execute(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
                    nonlocal execution
                    execution = await executor.submit(task_status=task_status)

                async with anyio.create_task_group() as tg:
                    handle = await tg.start(execute)
                    if handle.pid is None:
                        raise RuntimeError("Flow run process has no PID")
                    task_status.started(f"{self._hostname}:{handle.pid}")
            if execution is None or execution.status_code is None:
                raise RuntimeError("Failed to start flow run process.")
            return ProcessWorkerResult(
                status_code=execution.status_code, identifier=str(execution.handle.pid)
            )

    return WarmProcessWorker


def make_worker(pool: str, *, name: str | None = None, **kwargs: Any) -> Any:
    """A :class:`WarmProcessWorker` for ``pool`` (``kwargs`` go to Prefect's BaseWorker:
    work_queues, limit, prefetch_seconds, ``preload`` to the fork server)."""
    return _worker_class()(work_pool_name=pool, name=name, **kwargs)


def worker_command(settings: Settings) -> list[str]:
    """The command line of the platform's worker: the warm worker serving every queue of
    ``settings.work_pool``, polling every :data:`WARM_QUERY_SECONDS`."""
    return [
        sys.executable,
        "-m",
        "deployments.warm_worker",
        "--pool",
        settings.work_pool,
        "--query-seconds",
        f"{min(settings.worker_query_seconds, WARM_QUERY_SECONDS):g}",
        "--host-name",
        settings.host_name,
    ]


def main(argv: list[str] | None = None) -> None:
    """``python -m deployments.warm_worker --pool NAME [--name N] [--query-seconds S]
    [--limit N]``: run the warm worker until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(prog="python -m deployments.warm_worker")
    parser.add_argument("--pool", required=True)
    parser.add_argument("--name", default=None)
    parser.add_argument("--query-seconds", type=float, default=WARM_QUERY_SECONDS)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--queue", action="append", default=None)
    parser.add_argument(
        "--host-name", default=None, help="host part of the runs' host:pid (default: hostname)"
    )
    parser.add_argument(
        "--preload", action="append", default=[], help="extra module for the fork server"
    )
    args = parser.parse_args(argv)

    import anyio
    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

    from deployments.worker_metrics import start_worker_metrics

    worker = make_worker(
        args.pool,
        name=args.name,
        limit=args.limit,
        work_queues=args.queue,
        preload=[*preload_modules(), *args.preload],
        metrics=start_worker_metrics(),  # None when BOTAI_WORKER_METRICS_PORT is 0
        host_name=args.host_name,
    )
    with (
        temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: args.query_seconds}),
        contextlib.suppress(KeyboardInterrupt),
    ):
        anyio.run(worker.start)


if __name__ == "__main__":
    # run from the importable module (the worker class is then the same object whether
    # this file runs as __main__ or is re-imported as __mp_main__ by a forked child)
    from deployments.warm_worker import main as _main

    _main()
