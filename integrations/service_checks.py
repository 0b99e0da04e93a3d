"""Checks of single services over the wire: HTTP status, Redis ``PING``, the AMQP handshake,
a TCP connect, a Prefect work pool's online workers. Each returns (elapsed ms, error or None)
and never raises; :func:`integrations.health.run_checks` runs them with their timeouts.
"""

from __future__ import annotations

import socket
import struct
import time

import requests


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    address = address.split("://", 1)[-1].rstrip("/")
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host, int(port)


def check_http(url: str, expected_status: int, timeout_s: float) -> tuple[float, str | None]:
    """GET ``url``. Returns (elapsed ms, error or None). Never raises."""
    start = time.perf_counter()
    try:
        resp = requests.get(url, timeout=timeout_s)
    except requests.Timeout:
        return (time.perf_counter() - start) * 1000, f"timeout after {timeout_s:g}s"
    except requests.RequestException as e:
        return (time.perf_counter() - start) * 1000, f"unreachable: {type(e).__name__}"
    ms = (time.perf_counter() - start) * 1000
    if resp.status_code != expected_status:
        return ms, f"HTTP {resp.status_code} (expected {expected_status})"
    return ms, None


def check_redis(address: str, timeout_s: float) -> tuple[float, str | None]:
    """Send ``PING`` to Redis at ``host:port``. Returns (ms, error or None); never raises."""
    start = time.perf_counter()
    try:
        with socket.create_connection(_host_port(address, 6379), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
    except OSError as e:
        return (time.perf_counter() - start) * 1000, f"unreachable: {type(e).__name__}"
    ms = (time.perf_counter() - start) * 1000
    if not reply.startswith(b"+PONG"):
        return ms, f"unexpected reply {reply[:40]!r}"
    return ms, None


def check_amqp(address: str, timeout_s: float) -> tuple[float, str | None]:
    """Open an AMQP 0-9-1 handshake at ``host:port`` and expect Connection.Start.

    Returns (ms, error or None); never raises.
    """
    start = time.perf_counter()
    try:
        with socket.create_connection(_host_port(address, 5672), timeout=timeout_s) as s:
            s.settimeout(timeout_s)
            s.sendall(b"AMQP\x00\x00\x09\x01")
            header = _recv_exact(s, 11)
    except OSError as e:
        return (time.perf_counter() - start) * 1000, f"unreachable: {type(e).__name__}"
    ms = (time.perf_counter() - start) * 1000
    frame_type, channel, _size = struct.unpack(">BHI", header[:7])
    if frame_type != 1 or channel != 0 or header[7:11] != b"\x00\x0a\x00\x0a":
        return ms, f"no AMQP Connection.Start (got {header[:11]!r})"
    return ms, None


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("closed before the answer was complete")
        buf += chunk
    return buf


def check_tcp(address: str, default_port: int, timeout_s: float) -> tuple[float, str | None]:
    """Open a TCP connection. Returns (ms, error or None); never raises."""
    start = time.perf_counter()
    try:
        with socket.create_connection(_host_port(address, default_port), timeout=timeout_s):
            pass
    except OSError as e:
        return (time.perf_counter() - start) * 1000, f"unreachable: {type(e).__name__}"
    return (time.perf_counter() - start) * 1000, None


def check_prefect_worker(
    api_url: str, work_pool: str, timeout_s: float, auth_string: str | None = None
) -> tuple[float, str | None]:
    """Ask the Prefect API for the pool's workers; healthy when one is ONLINE.

    ``auth_string``: the API's ``user:password`` when it requires basic authentication.

    Returns (ms, error or None); never raises.
    """
    start = time.perf_counter()
    url = f"{api_url.rstrip('/')}/work_pools/{work_pool}/workers/filter"
    auth = tuple(auth_string.split(":", 1)) if auth_string else None
    try:
        resp = requests.post(url, json={}, timeout=timeout_s, auth=auth)
    except requests.RequestException as e:
        return (time.perf_counter() - start) * 1000, f"Prefect API unreachable: {type(e).__name__}"
    ms = (time.perf_counter() - start) * 1000
    if resp.status_code == 404:
        return ms, f"work pool {work_pool!r} does not exist"
    if resp.status_code != 200:
        return ms, f"Prefect API answered HTTP {resp.status_code}"
    online = [w for w in resp.json() if str(w.get("status", "")).upper() == "ONLINE"]
    if not online:
        return ms, f"no live worker in work pool {work_pool!r}"
    return ms, None
