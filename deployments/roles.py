"""``botai up --role server|worker|gateway|recovery``: one part of a stack spread over hosts.

``./scripts/up.sh`` (``botai up`` without a role) still starts everything on one machine. A
host with a role runs only its part, supervised (restart with backoff, watchdog) like the
all-in-one stack, and reaches the rest through its settings (core/settings_multihost.py):

* ``server``: Prefect's server as its high-availability guide describes it
  (:mod:`deployments.ha`): with part ``api`` one API server without background services, with
  part ``services`` the background services in a process of their own; the host running the
  services also prepares the stack once the API answers through the load balancer: blocks
  from the environment, MongoDB indexes, work pool and queues, the deployments of
  prefect.yaml and the crash-detection automation (all idempotent).
* ``worker``: the warm worker (and its fork server) for ``BOTAI_WORKER_QUEUES``, named after
  the host (``botai-worker-<host name>-<port>``), so that each host keeps its own heartbeat.
* ``gateway``: the HTTP gateway (needs ``BOTAI_API_JWT_SECRET``).
* ``recovery``: the crash-recovery service.

Secrets come from the environment or a file and are installed into the host's state folder
(mode 0600), where every process of the host reads them as on one machine: the Prefect API
auth string (every host; the same on all), the server's encryption key (server hosts).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

import httpx

from core.exceptions import ConfigurationError
from core.settings import Settings
from deployments import ha, secrets, service_records, services
from deployments.supervisor import ServiceSpec, state_path
from deployments.up import Say, StopRequested, _already_stopping, _raise_stop, prefect_api
from deployments.watchdog import StackWatch

log = logging.getLogger(__name__)

ROLES = ("server", "worker", "gateway", "recovery")


def _secret(environ: Mapping[str, str], variable: str, path: Path | None) -> str | None:
    """The secret in ``environ[variable]``, else in the file ``path``, else None.

    Raises:
        ConfigurationError: ``path`` is set but unreadable.
    """
    value = (environ.get(variable) or "").strip()
    if value:
        return value
    if path is None:
        return None
    try:
        return path.expanduser().read_text().strip() or None
    except OSError as e:
        raise ConfigurationError(f"cannot read the secret file {path}: {e.strerror}") from None


def _install(path: Path, value: str) -> None:
    """Write ``value`` to ``path`` (folder 0700, file 0600) unless it already holds it."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.exists() and path.read_text().strip() == value:
        return
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    tmp.replace(path)
    log.info("installed %s", path)


def install_secrets(settings: Settings, environ: Mapping[str, str], role: str) -> None:
    """Put the stack's secrets given by environment or file into this host's state folder.

    The auth string (``PREFECT_API_AUTH_STRING`` or ``BOTAI_PREFECT_AUTH_STRING_FILE``) is
    needed on every host, the encryption key (``PREFECT_SERVER_ENCRYPTION_KEY`` or
    ``BOTAI_PREFECT_ENCRYPTION_KEY_FILE``) on server hosts; a secret installed by an earlier
    start is used again.

    Raises:
        ConfigurationError: a needed secret is missing or malformed (says what to set).
    """
    auth = _secret(environ, "PREFECT_API_AUTH_STRING", settings.prefect_auth_string_file)
    if auth:
        _install(secrets.auth_string_path(settings), auth)
    elif not secrets.auth_string_path(settings).exists():
        raise ConfigurationError(
            "a host of a multi-host stack needs the stack's Prefect API auth string: set "
            "PREFECT_API_AUTH_STRING=user:password or BOTAI_PREFECT_AUTH_STRING_FILE (the "
            "same on every host)"
        )
    secrets.prefect_auth_string(settings)  # validates user:password
    if role != "server":
        return
    key_path = secrets.secrets_dir(settings) / secrets.ENCRYPTION_KEY_FILE
    key = _secret(environ, "PREFECT_SERVER_ENCRYPTION_KEY", settings.prefect_encryption_key_file)
    if key:
        _install(key_path, key)
    elif not key_path.exists():
        raise ConfigurationError(
            "a server host needs the stack's encryption key (block documents are encrypted "
            "with it): set PREFECT_SERVER_ENCRYPTION_KEY or BOTAI_PREFECT_ENCRYPTION_KEY_FILE "
            "(the same on every server host; make one with "
            "`python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'`)"
        )


class RoleWatch(StackWatch):
    """The supervised services of one role (the all-in-one stack's specs, probes and
    clean-ups, limited to the role's processes)."""

    def __init__(self, role: str, settings: Settings, env: Mapping[str, str], **kw: object):
        self.role = role
        super().__init__(settings, env, **kw)  # type: ignore[arg-type]

    def specs(self) -> list[ServiceSpec]:
        """The role's services in start order."""
        if self.role == "server":
            out = []
            if "api" in self.settings.server_parts:
                out.append(ServiceSpec("prefect-api", self._start_api, self._probe_api))
            if "services" in self.settings.server_parts:
                out.append(ServiceSpec("prefect-services", self._start_services))
            return out
        if self.role == "worker":
            return [
                ServiceSpec(
                    "prefect-worker", self._start_worker, self._probe_worker, self._worker_exited
                )
            ]
        if self.role == "recovery":
            return [ServiceSpec("recovery", self._start_recovery)]
        return [ServiceSpec("api-gateway", self._start_gateway, self._probe_gateway)]

    def _start_api(self) -> subprocess.Popen:
        return ha.start_api(self.settings, self.env)

    def _start_services(self) -> subprocess.Popen:
        return ha.start_services(self.settings, self.env)

    def _probe_api(self) -> str | None:
        try:
            httpx.get(f"{ha.local_api_url(self.settings)}/health", timeout=5).raise_for_status()
        except httpx.HTTPError as e:
            return f"/api/health failed: {type(e).__name__}"
        return None


def prepare_stack(settings: Settings, environ: Mapping[str, str], env: Mapping[str, str]) -> str:
    """Once the API answers through ``settings.prefect_api_url``: blocks from ``environ``,
    MongoDB indexes, work pool and queues, prefect.yaml's deployments, crash detection.

    Returns a one-line summary.

    Raises:
        ServiceUnavailableError: the API did not answer in time.
        ConfigurationError: a variable is invalid or prefect.yaml does not apply.
    """
    from blocks.loader import load_store
    from deployments import work_pool
    from deployments.automations import ensure_crash_detection
    from deployments.bootstrap import bootstrap_blocks
    from deployments.up import list_deployments

    services.wait_http_ok(
        f"{settings.prefect_api_url}/health", settings.startup_timeout_s, what="Prefect API"
    )
    with prefect_api(settings):
        blocks = bootstrap_blocks(settings, environ)
        load_store(ensure_indexes=False).ensure_indexes(force=True)
        work_pool.ensure_work_pool(settings)
        existing = {d.split("/", 1)[1] for d in list_deployments()}
        work_pool.apply_deployments(settings, env, existing=existing)
        ensure_crash_detection(settings)
        deployments = list_deployments()
    return f"{len(blocks)} blocks, {len(deployments)} deployments, pool {settings.work_pool}"


def wait_for_pool(settings: Settings) -> float:
    """Wait until the stack's work pool exists (a worker host may start before the host of
    the background services has prepared the stack). Returns the seconds waited.

    Raises:
        ServiceUnavailableError: no pool within ``startup_timeout_s``.
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from core.exceptions import ServiceUnavailableError

    started = time.monotonic()
    with get_client(sync_client=True) as client:
        while time.monotonic() - started < settings.startup_timeout_s:
            try:
                client.read_work_pool(settings.work_pool)
                return time.monotonic() - started
            except ObjectNotFound:
                time.sleep(1.0)
    raise ServiceUnavailableError(
        f"work pool {settings.work_pool} not found at {settings.prefect_api_url} within "
        f"{settings.startup_timeout_s:.0f} s: start the host of the background services "
        "(botai up --role server with BOTAI_SERVER_PARTS including services) first"
    )


def role_env(settings: Settings, environ: Mapping[str, str], role: str) -> dict[str, str]:
    """The environment of the role's processes: the stack's (services.prefect_env) with the
    remote API and host name; only a server host keeps the database URL."""
    env = services.prefect_env(
        settings, {k: v for k, v in environ.items() if k != secrets.GATEWAY_SECRET}
    )
    env["BOTAI_HOST_NAME"] = settings.host_name
    if settings.remote_api_url:
        env["BOTAI_REMOTE_API_URL"] = settings.remote_api_url
    if role != "server":
        for name in ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "BOTAI_PREFECT_DATABASE_URL"):
            env.pop(name, None)
        env.pop("BOTAI_REDIS_URL", None)
    return env


def start_role(settings: Settings, environ: Mapping[str, str], role: str, say: Say) -> RoleWatch:
    """Start the processes of ``role`` on this host (recorded for ``botai down``).

    Returns the :class:`RoleWatch` whose supervisor keeps them running.

    Raises:
        ConfigurationError: unknown role, missing secret or setting, a stack already runs on
            this state folder.
        ServiceUnavailableError: a process did not become ready in time.
    """
    if role not in ROLES:
        raise ConfigurationError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    running = service_records.running_services(settings)
    if running:
        raise ConfigurationError(
            f"a stack already runs on {settings.state_dir} ({', '.join(r.name for r in running)}):"
            " stop it with `botai down` or set BOTAI_STATE_DIR to another folder"
        )
    if role == "server":
        ha.ha_server_env(settings)  # PostgreSQL and Redis are set
    elif not settings.remote_api_url:
        raise ConfigurationError(
            f"the {role} role needs the stack's Prefect API: set BOTAI_REMOTE_API_URL="
            "http://LOAD_BALANCER:4200/api"
        )
    if role != "server" and not settings.mongodb_uri:
        raise ConfigurationError(f"the {role} role needs the stack's MongoDB: set MONGODB_URI")
    gateway_url = None
    if role == "gateway":
        from deployments.up import gateway_port

        port = gateway_port(environ)
        if port is None:
            raise ConfigurationError("the gateway role needs BOTAI_API_JWT_SECRET")
        gateway_url = f"http://{environ.get('BOTAI_API_HOST') or '127.0.0.1'}:{port}/api"
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    install_secrets(settings, environ, role)
    service_records.pid_file(settings).unlink(missing_ok=True)
    service_records.record_service(
        settings,
        service_records.CONTROLLER,
        os.getpid(),
        service_records.run_dir(settings) / "up.log",
    )
    env = role_env(settings, environ, role)
    gateway_env = (
        {**env, secrets.GATEWAY_SECRET: environ[secrets.GATEWAY_SECRET]} if gateway_url else None
    )
    watch = RoleWatch(role, settings, env, gateway_env=gateway_env, gateway_url=gateway_url)
    say(f"botai {role} on host {settings.host_name}, state folder {settings.state_dir}")
    for name in watch.supervisor.specs:
        if name == "prefect-worker":
            with prefect_api(settings):
                wait_for_pool(settings)
                proc = watch.supervisor.launch(name)
                services.wait_worker_online(settings, proc, settings.startup_timeout_s)
        else:
            watch.supervisor.launch(name)
        say(f"  {name} started")
    if role == "server" and "services" in settings.server_parts:
        say(f"  preparing the stack through {settings.prefect_api_url} ({ha.describe(settings)})")
        say(f"  {prepare_stack(settings, environ, env)}")
    with prefect_api(settings):
        watch.sink.connect()  # alerts through the stack's Slack/e-mail blocks; never raises
    watch.supervisor.write_state()
    return watch


def run_role(
    settings: Settings, environ: Mapping[str, str], role: str, *, say: Say, stay: bool = True
) -> RoleWatch:
    """``botai up --role ROLE``: start the role's processes and (``stay``) supervise them
    until SIGINT/SIGTERM; every started process is stopped on the way out.

    Returns the :class:`RoleWatch` (its processes still run when not ``stay``).

    Raises:
        ConfigurationError, ServiceUnavailableError: start-up failed (what started is
            stopped then).
    """
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    stop_needed = True
    try:
        watch = start_role(settings, environ, role, say)
        say(f"botai: {role} ready; supervising (Ctrl-C stops this host's processes)")
        if not stay:
            stop_needed = False
            return watch
        watch.supervisor.run()
        return watch
    except (StopRequested, KeyboardInterrupt) as e:
        say(f"botai: {e or 'interrupt'} received, stopping...")
        raise SystemExit(0) from None
    finally:
        if stop_needed:
            for s in previous:
                signal.signal(s, _already_stopping)
            stopped = services.stop_all(settings, owner=os.getpid())
            state_path(settings).unlink(missing_ok=True)
            say(f"botai: stopped {', '.join(stopped) or 'nothing'}")
        for s, handler in previous.items():
            signal.signal(s, handler)
