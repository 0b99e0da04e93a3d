"""The platform spread over test hosts (tests/multihost/lab.py), started the way
docs/multihost.md tells an operator to:

* ``db`` (.10): a private PostgreSQL (initdb/pg_ctl), a private redis-server and nx-27017;
* ``lb`` (.20): HAProxy in front of the two API servers (``deployments.ha.haproxy_config``);
* ``api1`` (.11), ``api2`` (.12): ``botai up --role server`` with ``BOTAI_SERVER_PARTS=api``;
* ``svc`` (.13): ``botai up --role server`` with ``BOTAI_SERVER_PARTS=services`` (it also
  prepares the stack: blocks, pool, deployments);
* ``w1`` (.21), ``w2`` (.22): ``botai up --role worker`` (and, for the bulk-analysis
  scenario, a Dask worker each, with the Dask scheduler on ``svc``);
* ``gw`` (.30): ``botai up --role gateway`` on port 8000;
* ``rec1`` (.31), ``rec2`` (.32): ``botai up --role recovery``, two replicas (one acts at a
  time, by a lease in MongoDB).

Every host gets the stack's secrets by environment, as the guide says, and a state folder
of its own.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.fernet import Fernet

from core.environment import REPO_ROOT
from deployments.ha import haproxy_config
from integrations.embedded_mongo import _executable as nx_executable
from tests.multihost.lab import Host, Lab

DB_NAME = "bot_ai_multihost"
#: Environment variables a host inherits from the test process (nothing of the test's stack).
INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "USER")

#: Fast polling and short backoffs so that the scenarios stay short on a loaded machine.
FAST = {
    "BOTAI_WORKER_QUERY_SECONDS": "1",
    "BOTAI_MIN_FREE_DISK_GB": "0.1",
    "BOTAI_SUPERVISOR_POLL_S": "1",
    "BOTAI_RESTART_BACKOFF_INITIAL_S": "0.5",
    "BOTAI_STARTUP_TIMEOUT_S": "240",
    "BOTAI_DEMO_PROBE_TIMEOUT_S": "0.1",
    "KERAS_BACKEND": "jax",
    "PREFECT_LOGGING_TO_API_ENABLED": "false",
}


@dataclass
class Cluster:
    """The running hosts and what a test needs to talk to them."""

    lab: Lab
    auth_string: str
    encryption_key: str
    jwt_secret: str
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    pg_dir: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    log_offsets: dict[str, int] = field(default_factory=dict)

    #: Hosts started together once the first API server answers, in this order.
    LATER = (("api2", "server"), ("svc", "server"), ("w1", "worker"), ("w2", "worker"))
    LATER += (("gw", "gateway"), ("rec1", "recovery"), ("rec2", "recovery"))

    @property
    def db(self) -> Host:
        return self.lab.hosts["db"]

    @property
    def api_url(self) -> str:
        """The Prefect API through the load balancer."""
        return f"http://{self.lab.hosts['lb'].address}:4200/api"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.lab.hosts['gw'].address}:8000/api"

    @property
    def dask_address(self) -> str:
        """The Dask scheduler of the services host (:meth:`start_dask`)."""
        return f"tcp://{self.lab.hosts['svc'].address}:8786"

    def start_dask(self) -> list[subprocess.Popen]:
        """A Dask scheduler on the services host and one Dask worker on each worker host, as
        docs/multihost.md tells an operator to start them. Returns their processes."""
        svc = self.lab.hosts["svc"]
        scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
        scheduler += ["--host", svc.address, "--port", "8786", "--no-dashboard"]
        procs = [self.lab.run(svc, scheduler, "svc-dask", self.host_env(svc))]
        self.lab.wait_log("svc-dask", "Scheduler at:", 120, procs[0])
        for name in ("w1", "w2"):
            host = self.lab.hosts[name]
            worker = [sys.executable, "-m", "distributed.cli.dask_worker", self.dask_address]
            worker += ["--host", host.address, "--nworkers", "1", "--nthreads", "1"]
            worker += ["--no-dashboard", "--name", f"dask-{name}"]
            procs.append(self.lab.run(host, worker, f"{name}-dask", self.host_env(host)))
        for name, proc in zip(("w1", "w2"), procs[1:], strict=True):
            self.lab.wait_log(f"{name}-dask", "Registered to:", 120, proc)
        return procs

    @property
    def mongodb_uri(self) -> str:
        return f"mongodb://{self.db.address}:27017/"

    @property
    def pg_url(self) -> str:
        return f"postgresql+asyncpg://postgres@{self.db.address}:5432/prefect"

    @property
    def redis_url(self) -> str:
        return f"redis://{self.db.address}:6379/0"

    # ------------------------------------------------------------ environments
    def host_env(self, host: Host, **extra: str) -> dict[str, str]:
        """What an operator exports on ``host`` before ``botai up --role``."""
        env = {k: os.environ[k] for k in INHERITED if k in os.environ}
        env.update(FAST)
        env.update(
            {
                "BOTAI_STATE_DIR": str(host.state_dir),
                "BOTAI_HOST_NAME": host.name,
                "BOTAI_REMOTE_API_URL": self.api_url,
                "PREFECT_API_AUTH_STRING": self.auth_string,
                "MONGODB_URI": self.mongodb_uri,
                "MONGODB_DATABASE": DB_NAME,
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        env.update(extra)
        return env

    def server_env(self, host: Host, parts: str) -> dict[str, str]:
        return self.host_env(
            host,
            BOTAI_SERVER_PARTS=parts,
            BOTAI_HOST=host.address,
            BOTAI_PREFECT_PORT="4200",
            BOTAI_PREFECT_DATABASE_URL=self.pg_url,
            BOTAI_REDIS_URL=self.redis_url,
            PREFECT_SERVER_ENCRYPTION_KEY=self.encryption_key,
        )

    def role_env(self, name: str) -> dict[str, str]:
        host = self.lab.hosts[name]
        if name in ("api1", "api2"):
            return self.server_env(host, "api")
        if name == "svc":
            return self.server_env(host, "services")
        if name == "gw":
            return self.host_env(
                host,
                BOTAI_API_JWT_SECRET=self.jwt_secret,
                BOTAI_API_HOST=host.address,
                BOTAI_API_PORT="8000",
                BOTAI_API_TRAININGS_PER_DAY="1000",
                BOTAI_API_TASKS_PER_DAY="1000",
                # a loaded 2-core machine runs 9 hosts' processes: give Prefect calls time
                BOTAI_API_PREFECT_TIMEOUT_S="20",
            )
        if name in ("w1", "w2"):  # bulk analysis fans out to the stack's Dask cluster
            return self.host_env(host, DASK_ADDRESS=self.dask_address)
        if name in ("rec1", "rec2"):
            # a run whose host died is found by its silent heartbeats (30 s apart): judge it
            # after two of them, and re-queue at once
            return self.host_env(
                host, BOTAI_RECOVERY_HEARTBEAT_STALE_S="60", BOTAI_RECOVERY_BACKOFF_S="1"
            )
        return self.host_env(host)

    # ------------------------------------------------------------ starting
    def start_role(self, name: str, role: str) -> subprocess.Popen:
        """``botai up --role ROLE`` on host ``name`` (its log: ``<name>``)."""
        cmd = [sys.executable, "-m", "deployments.cli", "up", "--role", role]
        self.log_offsets[name] = len(self.lab.log(name))  # a restarted host appends
        proc = self.lab.run(self.lab.hosts[name], cmd, name, self.role_env(name))
        self.procs[name] = proc
        return proc

    def wait_ready(self, name: str, role: str, timeout_s: float = 300) -> float:
        """Wait for the host's ``botai: ROLE ready`` line. Returns the seconds waited."""
        return self.lab.wait_log(
            name,
            f"botai: {role} ready",
            timeout_s,
            self.procs[name],
            since=self.log_offsets.get(name, 0),
        )

    def start_database_host(self) -> None:
        """PostgreSQL, Redis and nx-27017 on ``db``, each answering before this returns."""
        db = self.db
        self.pg_dir = Path(tempfile.mkdtemp(prefix="bmh-pg-"))
        shutil.chown(self.pg_dir, "postgres", "postgres")
        data = self.pg_dir / "data"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "initdb", "-D", str(data), "-A", "trust"]
            + ["-U", "postgres", "--no-sync"],
            check=True,
            capture_output=True,
            cwd=self.pg_dir,
        )
        with open(data / "pg_hba.conf", "a") as hba:  # the test hosts' subnet only
            hba.write(f"host all all {db.address.rsplit('.', 1)[0]}.0/24 trust\n")
        self.procs["postgres"] = self.lab.run(
            db,
            ["postgres", "-D", str(data), "-h", db.address, "-p", "5432", "-k", str(self.pg_dir)]
            + ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "max_connections=300"],
            "postgres",
            user="postgres",
            cwd=self.pg_dir,
        )
        redis_dir = self.lab.root / "redis"
        redis_dir.mkdir(exist_ok=True)
        self.procs["redis"] = self.lab.run(
            db,
            ["redis-server", "--bind", db.address, "--port", "6379", "--save", ""]
            + ["--appendonly", "no", "--protected-mode", "no", "--dir", str(redis_dir)],
            "redis",
        )
        mongo_dir = self.lab.root / "mongodb"
        mongo_dir.mkdir(exist_ok=True)
        self.procs["nx-27017"] = self.lab.run(
            db,
            [nx_executable(), "--data-dir", str(mongo_dir / "databases"), "--host", db.address]
            + ["--port", "27017", "--log-file", str(mongo_dir / "nx.log")],
            "nx-27017",
        )
        wait_tcp(db.address, 5432, 60, "PostgreSQL")
        deadline = time.monotonic() + 30
        while True:
            done = subprocess.run(
                ["createdb", "-h", db.address, "-U", "postgres", "prefect"],
                capture_output=True,
                text=True,
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"createdb failed: {done.stderr}")
            time.sleep(0.5)
        wait_tcp(db.address, 6379, 30, "Redis")
        wait_tcp(db.address, 27017, 30, "nx-27017")

    def start_load_balancer(self) -> None:
        lb = self.lab.hosts["lb"]
        config = haproxy_config(
            f"{lb.address}:4200",
            [f"{self.lab.hosts[n].address}:4200" for n in ("api1", "api2")],
        )
        path = self.lab.root / "haproxy.cfg"
        path.write_text(config)
        self.procs["haproxy"] = self.lab.run(lb, ["haproxy", "-db", "-f", str(path)], "haproxy")
        wait_tcp(lb.address, 4200, 20, "HAProxy")

    def start_all(self) -> None:
        """Every host in the order of docs/multihost.md; figures in :attr:`timings`."""
        started = time.monotonic()
        self.start_database_host()
        self.start_load_balancer()
        self.start_role("api1", "server")  # the first API server migrates the database
        self.timings["first_api_s"] = self.wait_ready("api1", "server")
        # then every other host at once: workers wait for the pool the services host creates
        later = time.monotonic()
        for name, role in self.LATER:
            self.start_role(name, role)
        for name, role in self.LATER:
            self.wait_ready(name, role)
            self.timings[f"{name}_ready_s"] = time.monotonic() - later
        self.timings["stack_ready_s"] = time.monotonic() - started

    def service_pid(self, host: str, service: str) -> int:
        """The pid ``botai up --role`` recorded for ``service`` on ``host``."""
        import json

        path = self.lab.hosts[host].state_dir / "run" / "services.json"
        records = [r for r in json.loads(path.read_text()) if r["name"] == service]
        return int(records[-1]["pid"])  # the newest (a replaced host keeps its old record)

    # ------------------------------------------------------------ talking to it
    def prefect_headers(self) -> dict[str, str]:
        import base64

        return {"Authorization": "Basic " + base64.b64encode(self.auth_string.encode()).decode()}

    def close(self) -> None:
        self.lab.close()
        if self.pg_dir is not None:
            shutil.rmtree(self.pg_dir, ignore_errors=True)


def wait_tcp(address: str, port: int, timeout_s: float, what: str) -> None:
    """Wait until ``address:port`` accepts a connection.

    Raises:
        AssertionError: not within ``timeout_s``.
    """
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((address, port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"{what} not listening on {address}:{port} within {timeout_s:.0f} s")


def build_cluster(root: Path) -> Cluster:
    """The lab with every host of the module docstring (not started yet)."""
    lab = Lab(root)
    for name, octet in [
        ("db", 10),
        ("api1", 11),
        ("api2", 12),
        ("svc", 13),
        ("lb", 20),
        ("w1", 21),
        ("w2", 22),
        ("gw", 30),
        ("rec1", 31),
        ("rec2", 32),
    ]:
        lab.add_host(name, octet)
    return Cluster(
        lab,
        auth_string="botai:" + secrets.token_urlsafe(24),
        encryption_key=Fernet.generate_key().decode(),
        jwt_secret="mh-" + secrets.token_urlsafe(40),
    )


def api_health(url: str) -> bool:
    """True when ``url``/health answers 2xx."""
    try:
        return httpx.get(f"{url}/health", timeout=3).is_success
    except httpx.HTTPError:
        return False
