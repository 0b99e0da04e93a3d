"""The main job (``botai up``): start the stack, load demo data, apply prefect.yaml, stay up.

Order: embedded store -> Prefect server (health) -> blocks from the environment ->
MongoDB indexes + demo market data -> work pool and queues -> worker -> ``prefect deploy
--all`` -> crash-detection automation -> recovery service (when deployments/recovery.py
exists) -> gateway -> "ready" -> a short first pipeline (ingest, one small training, one
backtest) -> supervise (deployments.supervisor: a dead or hung service is restarted with
backoff on the same port and data folder, alerts raised) until SIGINT/SIGTERM -> stop every
started process, orphaned flow runs included. When an earlier ``botai up`` on the state folder
died and left its services running, they are adopted instead (deployments.adoption).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import Any

from pydantic import BaseModel, ValidationError

from core.exceptions import ConfigurationError
from core.redact import redact_uri
from core.settings import Settings
from deployments import adoption, profile, secrets, service_records, services, work_pool
from deployments.ready import first_forecast_message, ready_message
from deployments.stack_status import status
from deployments.supervisor import state_path
from deployments.watchdog import StackWatch
from integrations.embedded_mongo import port_in_use

log = logging.getLogger(__name__)

Say = Callable[[str], None]

#: Deployments of the first pipeline, in the order their runs are created.
FIRST_PIPELINE = (
    "ingest-market-data/ingest-market-data",
    "train-model/train-model",
    "backtest-strategy/backtest-strategy",
)


class StopRequested(BaseException):  # noqa: N818 - a signal, not an error
    """SIGINT or SIGTERM arrived.

    A ``BaseException`` like ``KeyboardInterrupt``: the supervisor catches ``Exception``
    around every probe, restart and periodic job so that one bad round never ends
    supervision, and a signal arriving inside one of them must still stop the stack.
    """


@dataclass
class StackInfo:
    """What ``botai up`` started and loaded."""

    ui_url: str
    api_url: str
    mongodb_uri: str
    blocks: list[str]
    demo_summary: str
    deployments: list[str]
    seconds_to_ready: float
    first_runs: dict[str, str] = field(default_factory=dict)  # deployment -> run id or reason
    gateway_url: str | None = None  # None: BOTAI_API_JWT_SECRET unset, gateway not started
    first_model: str | None = None  # the version the first pipeline's training registers
    watch: StackWatch | None = field(default=None, repr=False)  # supervisor and watchdog
    adopted: list[str] = field(default_factory=list)  # services left running by a dead botai up


@contextmanager
def prefect_api(settings: Settings) -> Iterator[None]:
    """Point this process's Prefect client at the stack's API (and its home) while inside,
    with the stack's API auth string when the state folder has one."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_URL,
        PREFECT_HOME,
        temporary_settings,
    )

    updates = {PREFECT_API_URL: settings.prefect_api_url, PREFECT_HOME: settings.prefect_home}
    auth = secrets.existing_auth_string(settings)
    if auth is not None:
        updates[PREFECT_API_AUTH_STRING] = auth
    with temporary_settings(updates=updates):
        yield


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def _already_stopping(signum: int, _frame: FrameType | None) -> None:
    log.warning("%s received: already stopping every process", signal.Signals(signum).name)


def list_deployments() -> list[str]:
    """Every deployment of the current API as ``flow-name/deployment-name``, sorted."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployments = client.read_deployments()
        flows = {f.id: f.name for f in client.read_flows()}
    return sorted(f"{flows.get(d.flow_id, '?')}/{d.name}" for d in deployments)


def start_stack(settings: Settings, environ: Mapping[str, str], say: Say) -> StackInfo:
    """Start every component and load the demo data; the processes are recorded for stop.

    Returns the :class:`StackInfo` printed by :func:`ready_message`.

    Raises:
        ConfigurationError: a port is taken, a stack already runs on this state folder, an
            environment variable is invalid, or prefect.yaml does not apply.
        ServiceUnavailableError: a component did not become ready in time.
    """
    started = time.monotonic()
    api_port = gateway_port(environ)
    api_host = environ.get("BOTAI_API_HOST") or "127.0.0.1"
    gateway_url = f"http://{api_host}:{api_port}/api" if api_port is not None else None
    if adoption.orphaned_services(settings):  # the botai up that supervised them died
        return _adopt(settings, environ, gateway_url, say, started)
    running = service_records.running_services(settings)
    if running:
        raise ConfigurationError(
            f"a stack already runs on {settings.state_dir} ({', '.join(r.name for r in running)}):"
            " stop it with `botai down` or set BOTAI_STATE_DIR to another folder"
        )
    ports = [settings.prefect_port] + ([] if settings.mongodb_uri else [settings.mongodb_port])
    for port, variable in zip(ports, ("BOTAI_PREFECT_PORT", "BOTAI_MONGODB_PORT"), strict=False):
        if port_in_use(settings.host, port):
            raise ConfigurationError(
                f"port {port} on {settings.host} is already in use: stop what runs there "
                f"(`botai down`) or set {variable}"
            )
    if api_port is not None and port_in_use(api_host, api_port):
        raise ConfigurationError(
            f"port {api_port} on {api_host} is already in use: stop what runs there "
            "or set BOTAI_API_PORT"
        )
    service_records.pid_file(settings).unlink(missing_ok=True)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    service_records.record_service(
        settings,
        service_records.CONTROLLER,
        os.getpid(),
        service_records.run_dir(settings) / "up.log",
    )
    watch = adoption.build_watch(settings, environ, gateway_url)
    sup = watch.supervisor

    say(f"state folder: {settings.state_dir}")
    if settings.mongodb_uri:
        mongodb_uri = services.start_store(settings)  # an outside MongoDB: not supervised
    else:
        sup.launch("nx-27017")
        mongodb_uri = settings.embedded_mongodb_uri
    say(f"MongoDB: {redact_uri(mongodb_uri)}")
    say("starting the Prefect server (a fresh database migrates first, ~20 s)...")
    sup.launch("prefect-server")
    say(f"Prefect server healthy at {settings.prefect_api_url}")
    profile.write_profile(settings)  # other terminals: botai status/down, plain prefect

    with prefect_api(settings):
        from blocks.loader import load_store
        from deployments.automations import ensure_crash_detection
        from deployments.bootstrap import bootstrap_blocks
        from integrations.market_data.pipeline import load_demo_data

        blocks = bootstrap_blocks(settings, environ)
        store = load_store(ensure_indexes=False)
        store.ensure_indexes(force=True)  # an index dropped by hand comes back at start-up
        work_pool.ensure_work_pool(settings)
        worker = sup.launch("prefect-worker")
        say("loading demo market data...")
        demo = load_demo_data(store, settings)
        first_model = first_model_version(store)
        say("applying prefect.yaml (prefect deploy --all)...")
        existing = {d.split("/", 1)[1] for d in list_deployments()}
        if not work_pool.apply_deployments(settings, watch.env, existing=existing):
            say("  unchanged since the last apply (prefect.yaml, flows/, core/): kept")
        ensure_crash_detection(settings)
        services.wait_worker_online(settings, worker, settings.startup_timeout_s)
        watch.sink.connect()
        deployments = list_deployments()
    if "recovery" in sup.specs:
        say("starting the crash-recovery service (python -m deployments.recovery)...")
        sup.launch("recovery")
    if gateway_url:
        say(f"starting the HTTP gateway on {gateway_url}...")
        sup.launch("api-gateway")
    sup.write_state()
    return StackInfo(
        ui_url=settings.prefect_ui_url,
        api_url=settings.prefect_api_url,
        mongodb_uri=redact_uri(mongodb_uri),
        blocks=blocks,
        demo_summary=demo.summary(),
        deployments=deployments,
        seconds_to_ready=time.monotonic() - started,
        gateway_url=gateway_url,
        watch=watch,
        first_model=first_model,
    )


def _adopt(
    settings: Settings, environ: Mapping[str, str], gateway_url: str | None, say: Say, t0: float
) -> StackInfo:
    """Supervise what the previous ``botai up`` left running (deployments.adoption)."""
    say(f"state folder: {settings.state_dir}; the previous botai up is gone: adopting")
    watch, adopted = adoption.adopt(settings, environ, gateway_url, say)
    with prefect_api(settings):
        watch.sink.connect()
        deployments = list_deployments()
    mongodb_uri = settings.mongodb_uri or settings.embedded_mongodb_uri
    return StackInfo(
        settings.prefect_ui_url, settings.prefect_api_url, redact_uri(mongodb_uri), ["kept"], "",
        deployments, time.monotonic() - t0, gateway_url=gateway_url, watch=watch, adopted=adopted,
    )  # fmt: skip


def gateway_port(environ: Mapping[str, str]) -> int | None:
    """Port of the HTTP gateway (``BOTAI_API_PORT``, default 8000), or None when
    ``BOTAI_API_JWT_SECRET`` is unset or empty (the gateway is then not started).

    The gateway process (``python -m api.cli serve``, an upper layer this module does not
    import) validates the rest of its settings itself and exits with a message if invalid.

    Raises:
        ConfigurationError: ``BOTAI_API_PORT`` is not a port number.
    """
    if not environ.get("BOTAI_API_JWT_SECRET"):
        return None
    raw = environ.get("BOTAI_API_PORT") or "8000"
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigurationError(f"BOTAI_API_PORT must be a port number 1-65535 (got {raw!r})")
    return int(raw)


def first_pipeline_params(today: datetime | None = None) -> dict[str, BaseModel]:
    """Small parameters of the first pipeline's runs (validated), keyed by deployment."""
    from core.schemas.backtest import BacktestParameters
    from core.schemas.market_data import IngestParameters
    from core.schemas.training import TrainModelParams

    day = (today or datetime.now(UTC)).date()
    return {
        FIRST_PIPELINE[0]: IngestParameters(
            source="synthetic", symbols=["BTCUSDT"], timeframe="1h", days=30, resample_to=["4h"]
        ),
        FIRST_PIPELINE[1]: TrainModelParams(
            model_type="lstm",
            symbol="BTCUSDT",
            timeframe="1h",
            days_of_data=30,
            epochs=3,
            batch_size=32,
            units=8,
            lookback=12,
        ),
        FIRST_PIPELINE[2]: BacktestParameters(
            strategy_name="rsi",
            symbol="BTCUSDT",
            timeframe="1h",
            start_date=day - timedelta(days=60),
            end_date=day,
        ),
    }


def first_model_version(store: Any) -> str | None:
    """The version name the first pipeline's training will register (``lstm-BTCUSDT-1h-v1``
    on a fresh stack), or None when its parameters no longer validate."""
    from core.schemas.registry import version_label

    try:
        p = first_pipeline_params()[FIRST_PIPELINE[1]]
    except ValidationError:
        return None
    number = store.models.model_next_version(p.model_type, p.symbol, p.timeframe)
    return version_label(p.model_type, p.symbol, p.timeframe, number)


def start_first_pipeline(settings: Settings) -> dict[str, str]:
    """Create one run of each first-pipeline deployment that exists.

    Returns deployment -> ``run <name> (<id>)``, or the reason it was skipped.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    out: dict[str, str] = {}
    try:
        params = first_pipeline_params()
    except ValidationError as e:  # a schema changed under us: say so, start nothing
        return dict.fromkeys(FIRST_PIPELINE, f"skipped: parameters no longer validate ({e})")
    with prefect_api(settings), get_client(sync_client=True) as client:
        for name in FIRST_PIPELINE:
            try:
                deployment = client.read_deployment_by_name(name)
            except ObjectNotFound:
                out[name] = "skipped: deployment not in prefect.yaml yet"
                continue
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": params[name].model_dump(mode="json")}
            )
            out[name] = f"run {run.name} ({run.id})"
    return out


def up(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    say: Say,
    first_pipeline: bool = True,
    stay: bool = True,
) -> StackInfo:
    """Run the main job: start the stack, print what runs, start the first pipeline, and
    (``stay``) supervise it until SIGINT/SIGTERM: a service that dies or hangs is restarted
    with backoff and alerted, never the whole stack stopped (TC-ASYNC-076, 077, 078). Every
    started process is stopped on the way out.

    Returns the :class:`StackInfo` (after the stack was stopped when ``stay``).

    Raises:
        ConfigurationError, ServiceUnavailableError: start-up failed (every started process
            is stopped then).
    """
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    stop_needed = True
    info: StackInfo | None = None
    try:
        info = start_stack(settings, environ, say=say)
        say(ready_message(info, settings))
        if first_pipeline and not info.adopted:  # adopted: its first pipeline ran already
            info.first_runs = start_first_pipeline(settings)
            say("first pipeline (watch it in the UI):")
            for name, what in info.first_runs.items():
                say(f"  {name}: {what}")
            say(first_forecast_message(info))
        if not stay:
            stop_needed = False
            return info
        say("supervising: a service that dies is restarted (see `botai status`)")
        say("press Ctrl-C to stop every process")
        assert info.watch is not None
        info.watch.supervisor.run()
        return info
    except (StopRequested, KeyboardInterrupt) as e:
        say(f"botai: {e or 'interrupt'} received, stopping...")
        raise SystemExit(0) from None
    finally:
        if stop_needed:
            for s in previous:  # a second Ctrl-C must not abandon the stop half-way
                signal.signal(s, _already_stopping)
            stopped = services.stop_all(settings, owner=os.getpid())
            state_path(settings).unlink(missing_ok=True)
            if info is not None and info.watch is not None:
                info.watch.sink.close()
            say(f"botai: stopped {', '.join(stopped) or 'nothing'}")
        for s, handler in previous.items():
            signal.signal(s, handler)


__all__ = ["StackInfo", "ready_message", "start_stack", "status", "up"]
