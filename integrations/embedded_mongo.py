"""Start and stop the embedded MongoDB-compatible store (nx-27017) as a child process.

nx-27017 speaks the MongoDB wire protocol on top of one SQLite file, so the rest of the
code only ever sees pymongo. Production sets ``MONGODB_URI`` and never starts this.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from core.exceptions import (
    ConfigurationError,
    ServiceUnavailableError,
    StoreError,
    StoreUnavailableError,
)
from integrations.store import Store, connect

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on ``host`` a moment ago."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


@dataclass
class EmbeddedMongo:
    """A running nx-27017 process.

    Attributes:
        process: the child process.
        uri: ``mongodb://host:port/``.
        db_path: the folder of SQLite files (one per database) holding the data.
    """

    process: subprocess.Popen
    uri: str
    db_path: Path
    log_path: Path

    def stop(self, timeout_s: float = 10.0) -> None:
        """Terminate the process (SIGTERM, then SIGKILL) and wait for it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout_s)


def _executable() -> str:
    exe = Path(sys.executable).with_name("nx-27017")
    if exe.exists():
        return str(exe)
    found = shutil.which("nx-27017")
    if not found:
        raise ConfigurationError("nx-27017 is not installed: run the README's set-up command")
    return found


def start_embedded_mongo(
    data_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout_s: float = 30.0,
    env: Mapping[str, str] | None = None,
) -> EmbeddedMongo:
    """Start nx-27017 on ``data_dir/databases/<db>.db`` and wait until it answers ``ping``.

    Args:
        port: TCP port; None picks a free one.
        env: the process environment; None inherits this process's (pass a reduced one so
            that no secret reaches the store).

    Returns:
        the running :class:`EmbeddedMongo`.

    Raises:
        ConfigurationError: the port is taken by another process.
        ServiceUnavailableError: the process exited or did not answer within ``timeout_s``.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    if port_in_use(host, port):
        raise ConfigurationError(
            f"port {port} on {host} is already in use: stop what runs there or set BOTAI_MONGODB_PORT"
        )
    db_path = data_dir / "databases"  # one SQLite file per logical database
    log_path = data_dir / "nx-27017.log"
    cmd = [
        _executable(),
        "--data-dir",
        str(db_path),
        "--host",
        host,
        "--port",
        str(port),
        "--log-file",
        str(log_path),
        "--pid-file",
        str(data_dir / "nx-27017.pid"),
    ]
    with open(data_dir / "nx-27017.out", "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else dict(env),
        )
    uri = f"mongodb://{host}:{port}/"
    server = EmbeddedMongo(proc, uri, db_path, log_path)
    deadline = time.monotonic() + timeout_s
    client = connect(uri, timeout_ms=500)
    probe = Store(client, "admin")  # its boundary converts the client's errors
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise ServiceUnavailableError(
                    f"nx-27017 exited with code {proc.returncode}; see {data_dir / 'nx-27017.out'}"
                )
            try:
                probe.ping()
                log.info("nx-27017 ready at %s (data %s)", uri, db_path)
                return server
            except (StoreUnavailableError, StoreError):
                time.sleep(0.2)
    finally:
        client.close()
    server.stop()
    raise ServiceUnavailableError(f"nx-27017 did not answer ping within {timeout_s:.0f} s")
