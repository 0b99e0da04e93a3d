"""The fork server of the warm worker: one pre-imported parent per worker, one forked
child per flow run (see deployments/warm_worker.py for why and what is kept).

* :func:`fork_context` / :func:`warm_up`: ``multiprocessing``'s ``forkserver`` (a separate,
  single-threaded interpreter: no event loop, threads, JAX computation, Dask cluster or API
  client ever exist in it) preloaded with Prefect, pandas, numpy, pydantic and every
  ``flows.*`` module;
* :class:`ForkStarter`: Prefect's process-starter protocol; forks the run and waits for it;
* :func:`_run_flow_run`: the child's body, ``python -m prefect.engine`` in-process;
* :func:`preloaded_entrypoint`: when a deployment's flow can be taken from the preload;
* :func:`code_fingerprint`: detects code changed on disk (the server is then restarted).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import multiprocessing
import multiprocessing.context
import os
import pkgutil
import re
import sys
from pathlib import Path
from typing import Any

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
    # imported by every run's first task call (Task.__call__'s visualisation tracker: graphviz,
    # 0.02-0.3 s a run) and by the backtest's equity chart: imported once here instead
    "prefect.utilities.visualization",
    "matplotlib.figure",
    "matplotlib.backends.backend_agg",
    "deployments.fork_server",
]


#: Imported after the preload list: freezes what the server imported (see the module).
FREEZE_MODULE = "deployments.fork_freeze"


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


def settings_env() -> dict[str, str]:
    """The current Prefect settings as environment variables, as Prefect writes them into
    each job's env (``PREFECT_WORKER_*`` left out: the worker's own)."""
    from prefect.settings import get_current_settings

    env = get_current_settings().to_environment_variables(exclude_unset=True)
    return {k: str(v) for k, v in env.items() if not k.startswith("PREFECT_WORKER_")}


def _run_flow_run(flow_run_id: str, env: dict[str, str], cwd: str) -> None:
    """Body of the forked child: run flow run ``flow_run_id`` like ``python -m prefect.engine``.

    Sets the environment and working directory (Prefect's settings and logging are rebuilt
    only when the job's env changes a setting against the fork server's), asks the start
    guard (:mod:`deployments.start_guard`: returns without running when a cancel reached the
    run first), then executes the engine's ``__main__`` block. Exits with the
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
    from deployments.start_guard import may_start

    if not may_start(flow_run_id):  # a cancel reached the run first: never run its flow
        atexit._run_exitfuncs()
        return
    sys.argv = ["prefect.engine", flow_run_id]
    # prefect.engine is imported already (preloaded): running it as __main__ is intended
    warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
    profile_dir = env.get("BOTAI_PROFILE_RUNS_DIR")  # a developer's profile of each run
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=False)
    finally:
        if profiler is not None:
            profiler.disable()
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            profiler.dump_stats(str(Path(profile_dir) / f"{flow_run_id}.prof"))
        atexit._run_exitfuncs()


def fork_context(preload: list[str] | None = None) -> multiprocessing.context.ForkServerContext:
    """The ``forkserver`` multiprocessing context with the platform's preload list.

    Returns the context (its server starts on first use or :func:`warm_up`).
    """
    ctx = multiprocessing.get_context("forkserver")
    modules = preload if preload is not None else preload_modules()
    ctx.set_forkserver_preload([*modules, FREEZE_MODULE])
    return ctx  # type: ignore[return-value]


def warm_up(ctx: multiprocessing.context.ForkServerContext) -> None:
    """Start the fork server and wait until it has imported its preload list (one no-op
    child is forked and joined)."""
    proc = ctx.Process(target=_noop, name="botai-warm-up")
    proc.start()
    proc.join()


def restart_fork_server(ctx: multiprocessing.context.ForkServerContext) -> None:
    """Stop the fork server (runs it forked keep running) and start a fresh one."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()
    warm_up(ctx)


def fork_server_pid() -> int | None:
    """Pid of this process's fork server, None while none runs (metrics read it)."""
    from multiprocessing import forkserver

    return getattr(forkserver._forkserver, "_forkserver_pid", None)


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
