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

Pickup: the worker polls its queues every ``--query-seconds`` (default
:data:`WARM_QUERY_SECONDS`) instead of the stock 2-10 s, one cheap API call per poll.

Run: ``python -m deployments.warm_worker --pool botai-process`` (see :func:`worker_command`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib.util
import multiprocessing
import multiprocessing.context
import os
import pkgutil
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.settings import Settings

#: Seconds between two polls of the pool's queues by the warm worker.
WARM_QUERY_SECONDS = 0.25

#: Seconds a deployment's entrypoint and pull steps are reused without reading them again.
DEPLOYMENT_CACHE_S = 30.0

#: Modules the fork server imports once, before it forks any run (plus every flows.*).
PRELOAD_MODULES = [
    "prefect",
    "prefect.engine",
    "prefect.flow_engine",
    "prefect.flows",
    "prefect.deployments.steps",
    "pandas",
    "numpy",
    "pydantic",
    "psutil",
]


def preload_modules() -> list[str]:
    """The module names the fork server imports: :data:`PRELOAD_MODULES` and every
    module of the ``flows`` package (their tasks, ml and integrations come with them)."""
    import flows

    names = [f"flows.{m.name}" for m in pkgutil.iter_modules(flows.__path__)]
    return [*PRELOAD_MODULES, *sorted(names)]


def _noop() -> None:
    """Target of the warm-up child (proves the fork server is ready)."""


def _settings_differ(inherited: dict[str, str], env: dict[str, str]) -> bool:
    """True when ``env`` changes a Prefect setting (``PREFECT_*``; not the per-run
    ``PREFECT__*`` variables nor the worker's own ``PREFECT_WORKER_*``) against the
    environment the fork server imported Prefect with."""

    def settings(e: dict[str, str]) -> dict[str, str]:
        return {
            k: v
            for k, v in e.items()
            if k.startswith("PREFECT_") and not k.startswith(("PREFECT__", "PREFECT_WORKER_"))
        }

    return settings(inherited) != settings(env)


def _settings_env() -> dict[str, str]:
    """The current Prefect settings as environment variables, as Prefect writes them into
    each job's env (``PREFECT_WORKER_*`` left out: the worker's own)."""
    from prefect.settings import get_current_settings

    env = get_current_settings().to_environment_variables(exclude_unset=True)
    return {k: str(v) for k, v in env.items() if not k.startswith("PREFECT_WORKER_")}


def _run_flow_run(flow_run_id: str, env: dict[str, str], cwd: str) -> None:
    """Body of the forked child: run flow run ``flow_run_id`` like ``python -m prefect.engine``.

    Sets the environment and working directory (Prefect's settings and logging are rebuilt
    only when the job's env changes a setting against the fork server's), then executes
    the engine's ``__main__`` block. Exits with the
    engine's status (SystemExit); Prefect's at-exit hooks (log and event flushing) are run
    explicitly because a multiprocessing child leaves with ``os._exit``.
    """
    import runpy
    import warnings

    inherited = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    if _settings_differ(inherited, env):
        import prefect.context
        from prefect.logging.configuration import setup_logging

        prefect.context.refresh_global_settings_context()
        with contextlib.suppress(Exception):
            setup_logging(incremental=False)
    sys.argv = ["prefect.engine", flow_run_id]
    # prefect.engine is imported already (preloaded): running it as __main__ is intended
    warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=False)
    finally:
        atexit._run_exitfuncs()


def fork_context(preload: list[str] | None = None) -> multiprocessing.context.ForkServerContext:
    """The ``forkserver`` multiprocessing context with the platform's preload list.

    Returns the context (its server starts on first use or :func:`warm_up`).
    """
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(preload if preload is not None else preload_modules())
    return ctx  # type: ignore[return-value]


def warm_up(ctx: multiprocessing.context.ForkServerContext) -> None:
    """Start the fork server and wait until it has imported its preload list (one no-op
    child is forked and joined)."""
    proc = ctx.Process(target=_noop, name="botai-warm-up")
    proc.start()
    proc.join()


def _restart_fork_server(ctx: multiprocessing.context.ForkServerContext) -> None:
    """Stop the fork server (runs it forked keep running) and start a fresh one."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()
    warm_up(ctx)


def _child_env(
    flow_run_id: str, job_env: dict[str, str | None], control_env: dict[str, str]
) -> dict[str, str]:
    """The environment of a run: the worker's environment (which carries the stack's
    Prefect settings) updated by the job's env, plus the run's id and control-channel
    coordinates (what the stock engine starter passes)."""
    env: dict[str, str | None] = dict(os.environ)
    env.update(job_env)
    env.update(
        {
            "PREFECT__FLOW_RUN_ID": flow_run_id,
            "PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false",
            **control_env,
        }
    )
    return {k: v for k, v in env.items() if v is not None}


def _create_time(pid: int | None) -> float | None:
    """Start time of process ``pid`` (None when it is already gone)."""
    import psutil

    try:
        return psutil.Process(pid).create_time() if pid else None
    except psutil.Error:
        return None


def _same_process_alive(pid: int, create_time: float) -> bool:
    """True while process ``pid`` started at ``create_time`` runs (zombies count as gone)."""
    import psutil

    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.01 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


#: Packages whose code the fork server holds in memory; a change restarts it.
CODE_PACKAGES = ("flows", "tasks", "ml", "core", "integrations", "blocks", "backtest")

_STEP_SET_CWD = {
    "prefect.deployments.steps.set_working_directory",
    "prefect.deployments.steps.pull.set_working_directory",
}
_ENV_TEMPLATE = re.compile(r"^\{\{\s*\$(\w+)\s*\}\}$")
_ENTRYPOINT = re.compile(r"^([\w/]+)\.py:(\w+)$")


def code_fingerprint(root: Path) -> tuple[tuple[str, int, int], ...]:
    """(path, mtime_ns, size) of every .py file of :data:`CODE_PACKAGES` under ``root``."""
    out = []
    for pkg in CODE_PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            with contextlib.suppress(OSError):
                st = path.stat()
                out.append((str(path), st.st_mtime_ns, st.st_size))
    return tuple(out)


def preloaded_entrypoint(
    entrypoint: str | None,
    pull_steps: list[dict[str, Any]] | None,
    env: dict[str, str | None],
    preloaded: set[str],
) -> tuple[Path, str] | None:
    """How a deployment's flow can be taken from the fork server's imports.

    Applies when the deployment's pull steps are exactly one ``set_working_directory``
    (a literal folder or ``{{ $VAR }}``) and its entrypoint ``pkg/mod.py:fn`` names a
    module of ``preloaded`` found in that folder.

    Returns:
        (working directory, ``pkg.mod:fn``), or None when the run must load its flow the
        stock way (pull steps, then the entrypoint file).
    """
    match = _ENTRYPOINT.match(entrypoint or "")
    steps = pull_steps or []
    if match is None or len(steps) != 1 or next(iter(steps[0])) not in _STEP_SET_CWD:
        return None
    directory = str((next(iter(steps[0].values())) or {}).get("directory") or "")
    var = _ENV_TEMPLATE.match(directory)
    if var:
        directory = env.get(var.group(1)) or os.environ.get(var.group(1)) or ""
    if not directory or "{{" in directory:
        return None
    module = match.group(1).replace("/", ".")
    path = Path(directory, f"{match.group(1)}.py").resolve()
    try:
        spec = importlib.util.find_spec(module) if module in preloaded else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None or Path(spec.origin).resolve() != path:
        return None
    return Path(directory), f"{module}:{match.group(2)}"


class _HostPidStatus:
    """Passes ``host:pid`` on to the worker when the stock starter reports a bare pid."""

    def __init__(self, inner: Any, host: str) -> None:
        self._inner, self._host = inner, host

    def started(self, value: Any = None) -> None:
        self._inner.started(f"{self._host}:{value}")


class ForkStarter:
    """Prefect process starter (``prefect.runner`` ``ProcessStarter`` protocol) that forks
    the run from the fork server instead of spawning ``python -m prefect.engine``."""

    def __init__(
        self,
        ctx: multiprocessing.context.ForkServerContext,
        *,
        cwd: Path,
        env: dict[str, str | None],
        control_channel: Any = None,
        entrypoint: str | None = None,
    ) -> None:
        self._ctx = ctx
        self._cwd = cwd
        self._env = env
        self._control_channel = control_channel
        self._entrypoint = entrypoint

    async def start(self, flow_run: Any, task_status: Any = None) -> None:
        """Fork the run's process, hand its :class:`ProcessHandle` to ``task_status``
        and return when the process has exited."""
        import anyio
        from prefect.runner._process_manager import ProcessHandle

        control_env: dict[str, str] = {}
        registered = False
        if self._control_channel is not None:
            try:
                port, token = self._control_channel.register(flow_run.id)
                control_env = {"PREFECT__CONTROL_PORT": str(port), "PREFECT__CONTROL_TOKEN": token}
                registered = True
            except RuntimeError:  # channel disabled: kill-only cancellation, as stock
                pass
        env = _child_env(str(flow_run.id), self._env, control_env)
        if self._entrypoint:
            env["PREFECT__FLOW_ENTRYPOINT"] = self._entrypoint
        proc = self._ctx.Process(
            target=_run_flow_run,
            args=(str(flow_run.id), env, str(self._cwd)),
            name=f"flow-run-{flow_run.id}",
        )
        try:
            await anyio.to_thread.run_sync(proc.start)
        except BaseException:
            if registered:
                self._control_channel.unregister(flow_run.id)
            raise
        born = _create_time(proc.pid)
        if task_status is not None:
            task_status.started(ProcessHandle(proc))
        await anyio.to_thread.run_sync(proc.join, abandon_on_cancel=True)
        # the exit status comes through the fork server; if that server died the run may
        # still be running: never report a live run as exited
        while born is not None and _same_process_alive(proc.pid, born):
            await anyio.sleep(0.5)


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
            **kwargs: Any,
        ) -> None:
            super().__init__(*args, **kwargs)
            self._preload = preload if preload is not None else preload_modules()
            self._fork_ctx = fork_context(self._preload)
            self._hostname = socket.gethostname()
            self._code_root = code_root or Path(__file__).resolve().parent.parent
            self._fingerprint: tuple = ()
            self._in_flight = 0
            self._deployments: dict[Any, tuple[float, str | None, Any]] = {}
            self._restart_lock = anyio.Lock()

        async def __aenter__(self) -> WarmProcessWorker:
            self._fingerprint = code_fingerprint(self._code_root)
            # the fork server imports Prefect with the settings every job env will carry
            # (Prefect writes them into each job's env), so a run need not rebuild them
            os.environ.update(_settings_env())
            await anyio.to_thread.run_sync(warm_up, self._fork_ctx)
            await super().__aenter__()
            # one executor context for the worker's life (as Prefect's Runner keeps one):
            # its API client, control channel and cancellation observer serve every run
            self._exec_ctx = FlowRunExecutorContext()
            await self._exec_ctx.__aenter__()
            return self

        async def __aexit__(self, *exc_info: Any) -> None:
            try:
                await super().__aexit__(*exc_info)
            finally:
                await self._exec_ctx.__aexit__(None, None, None)

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
                await anyio.to_thread.run_sync(_restart_fork_server, self._fork_ctx)
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
            try:
                if not await self._fork_server_current():
                    return await super().run(
                        flow_run, configuration, _HostPidStatus(task_status, self._hostname)
                    )
                return await self._run_forked(flow_run, configuration, task_status)
            finally:
                self._in_flight -= 1

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
        "--preload", action="append", default=[], help="extra module for the fork server"
    )
    args = parser.parse_args(argv)

    import anyio
    from prefect.settings import PREFECT_WORKER_QUERY_SECONDS, temporary_settings

    worker = make_worker(
        args.pool,
        name=args.name,
        limit=args.limit,
        work_queues=args.queue,
        preload=[*preload_modules(), *args.preload],
    )
    with (
        temporary_settings(updates={PREFECT_WORKER_QUERY_SECONDS: args.query_seconds}),
        contextlib.suppress(KeyboardInterrupt),
    ):
        anyio.run(worker.start)


if __name__ == "__main__":
    # run from the importable module, so the fork server unpickles
    # deployments.warm_worker._run_flow_run (not __main__'s copy)
    from deployments.warm_worker import main as _main

    _main()
