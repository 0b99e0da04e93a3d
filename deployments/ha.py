"""Prefect's server the way Prefect documents high availability: PostgreSQL, Redis, several
API server processes behind a load balancer, the background services in a process of their own.

* :func:`ha_server_env`: the variables every server process of the stack gets: the PostgreSQL
  database, Redis messaging and cache (``prefect_redis.messaging``), causal event ordering
  (``prefect_redis.ordering``), concurrency leases in Redis (``prefect_redis.lease_storage``:
  a training slot outlives the death of the server that granted it, and the repossessor of
  any services process frees the slots of holders that stopped renewing) and the docket.
* :func:`start_api`: one API server, ``python -m deployments.prefect_server --no-services``
  (Prefect's app as ``prefect server start --no-services`` serves it, behind the replay of
  database-busy answers), waited on until ``/api/health`` answers.
* :func:`start_services`: ``prefect server services start``: scheduler, late runs,
  repossessor, cancellation clean-up, event services... in one process.
* :func:`haproxy_config`: an HAProxy configuration balancing the API servers, with health
  checks and websocket (events) support; ``python -m deployments.ha haproxy-config`` writes it.

Every host of the stack has the same auth string and the server hosts the same encryption key
(deployments/roles.py installs them from the environment or a file).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from core.exceptions import ConfigurationError, ServiceUnavailableError
from core.redact import redact_uri
from core.settings import Settings
from deployments import secrets, services
from deployments.process_groups import kill_group
from deployments.service_records import run_dir

#: Seconds a freshly started services process must stay up to count as started.
SERVICES_SETTLE_S = 3.0


def ha_server_env(settings: Settings) -> dict[str, str]:
    """Returns the Prefect variables of a high-availability server process (API or
    services): database, Redis messaging, ordering, lease storage and docket.

    Raises:
        ConfigurationError: no PostgreSQL database (``BOTAI_PREFECT_DATABASE_URL``) or no
            Redis (``BOTAI_REDIS_URL``): several server processes cannot share SQLite or
            in-memory messaging.
    """
    db = settings.prefect_database_url or ""
    if not db.startswith("postgresql"):
        raise ConfigurationError(
            "a Prefect server of several processes needs PostgreSQL: set "
            "BOTAI_PREFECT_DATABASE_URL=postgresql+asyncpg://USER@HOST:5432/DATABASE"
        )
    if not settings.redis_url or not settings.redis_url.startswith(("redis://", "rediss://")):
        raise ConfigurationError(
            "a Prefect server of several processes needs Redis: set "
            "BOTAI_REDIS_URL=redis://HOST:6379/0"
        )
    return {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": db,
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_REDIS_MESSAGING_URL": settings.redis_url,
        "PREFECT_SERVER_DOCKET_URL": settings.redis_url,
    }


def server_process_env(settings: Settings, env: Mapping[str, str]) -> dict[str, str]:
    """Returns ``env`` plus :func:`ha_server_env` and the server's secrets (auth string,
    encryption key).

    Raises:
        ConfigurationError: see :func:`ha_server_env`; the secrets are unreadable.
    """
    ha = ha_server_env(settings)
    db = ha["PREFECT_SERVER_DATABASE_CONNECTION_URL"]
    return {**env, **ha, **secrets.server_env(settings, db)}


def local_api_url(settings: Settings) -> str:
    """This host's own API server (not the load balancer): ``http://HOST:PORT/api``."""
    return f"http://{settings.host}:{settings.prefect_port}/api"


def start_api(settings: Settings, env: Mapping[str, str]) -> subprocess.Popen:
    """Start one API server (no background services) on ``settings.host:prefect_port``, as
    ``prefect-api``, and wait until its ``/api/health`` answers.

    Returns the process.

    Raises:
        ConfigurationError: the port is taken, or see :func:`ha_server_env`.
        ServiceUnavailableError: it exited or did not answer in time (its log is named).
    """
    from integrations.embedded_mongo import port_in_use

    if port_in_use(settings.host, settings.prefect_port):
        raise ConfigurationError(
            f"port {settings.prefect_port} on {settings.host} is already in use: stop what "
            "runs there or set BOTAI_PREFECT_PORT"
        )
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "deployments.prefect_server", "--host", settings.host]
    cmd += ["--port", str(settings.prefect_port), "--no-services"]
    proc = services.spawn("prefect-api", cmd, server_process_env(settings, env), settings)
    try:
        services.wait_http_ok(
            f"{local_api_url(settings)}/health",
            settings.startup_timeout_s,
            proc=proc,
            what="Prefect API server",
        )
    except ServiceUnavailableError as e:
        kill_group(proc)
        raise ServiceUnavailableError(f"{e}; see {run_dir(settings) / 'prefect-api.log'}") from None
    return proc


def start_services(settings: Settings, env: Mapping[str, str]) -> subprocess.Popen:
    """Start Prefect's background services in one process (``prefect server services
    start``) as ``prefect-services``. Returns the process once it stayed up
    :data:`SERVICES_SETTLE_S`.

    Raises:
        ConfigurationError: see :func:`ha_server_env`.
        ServiceUnavailableError: it exited at once (its log is named).
    """
    settings.prefect_home.mkdir(parents=True, exist_ok=True)
    # a pid file left by a killed services process would make the new one refuse to start
    (settings.prefect_home / "services.pid").unlink(missing_ok=True)
    cmd = services.prefect_cmd("server", "services", "start")
    proc = services.spawn("prefect-services", cmd, server_process_env(settings, env), settings)
    deadline = time.monotonic() + SERVICES_SETTLE_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServiceUnavailableError(
                f"Prefect services exited with code {proc.returncode}; see "
                f"{run_dir(settings) / 'prefect-services.log'}"
            )
        time.sleep(0.2)
    return proc


def describe(settings: Settings) -> str:
    """One line naming the database and Redis of the HA server (passwords masked)."""
    return (
        f"PostgreSQL {redact_uri(settings.prefect_database_url or '-')}, "
        f"Redis {redact_uri(settings.redis_url or '-')}"
    )


def haproxy_config(bind: str, servers: Sequence[str], *, check_interval_ms: int = 1000) -> str:
    """Returns an HAProxy configuration that listens on ``bind`` (``HOST:PORT``) and balances
    the API servers ``servers`` (``HOST:PORT`` each).

    A server is taken out after 2 failed ``GET /api/health`` checks (one per
    ``check_interval_ms``) and back after 2 good ones; a request whose connection to a server
    failed is sent to another (``option redispatch``); websockets (the events stream) pass
    through (``timeout tunnel``).

    Raises:
        ConfigurationError: ``bind`` or a server is not ``HOST:PORT``, or no server.
    """
    for address in [bind, *servers]:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigurationError(f"expected HOST:PORT, got {address!r}")
    if not servers:
        raise ConfigurationError("the load balancer needs at least one API server (HOST:PORT)")
    lines = [
        "global",
        "    maxconn 2048",
        "defaults",
        "    mode http",
        "    option httplog",
        "    option redispatch",
        "    retries 3",
        "    timeout connect 2s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    timeout tunnel 1h",
        "frontend prefect_api",
        f"    bind {bind}",
        "    default_backend prefect_api_servers",
        "backend prefect_api_servers",
        "    balance roundrobin",
        "    retry-on conn-failure empty-response response-timeout",
        "    option httpchk GET /api/health",
        "    http-check expect status 200",
    ]
    for i, server in enumerate(servers, 1):
        lines.append(f"    server api{i} {server} check inter {check_interval_ms} fall 2 rise 2")
    return "\n".join(lines) + "\n"


def haproxy_command(config_path: str) -> list[str]:
    """HAProxy in the foreground (``-db``) on ``config_path`` (supervise it like any service)."""
    return ["haproxy", "-db", "-f", config_path]


def main(argv: list[str] | None = None) -> int:
    """``python -m deployments.ha haproxy-config --bind H:P --server H:P [--server H:P...]``:
    write the load balancer's configuration to stdout. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m deployments.ha")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("haproxy-config", help="HAProxy configuration for the API servers")
    p.add_argument("--bind", required=True, metavar="HOST:PORT")
    p.add_argument("--server", action="append", required=True, metavar="HOST:PORT")
    args = parser.parse_args(argv)
    try:
        sys.stdout.write(haproxy_config(args.bind, args.server))
    except ConfigurationError as e:
        sys.stderr.write(f"python -m deployments.ha: {e}\n")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
