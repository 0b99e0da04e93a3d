"""Health checks of the platform's services (pure: no Prefect import).

Flow: :func:`load_checks` reads ``config/health_checks.yaml`` -> :func:`run_checks` runs every
check in parallel threads, each with its own timeout and all within one deadline ->
:func:`apply_failure_state` turns a first failure into ``failing`` and a second consecutive
one into ``down`` -> :func:`build_report` computes the overall status (the worst of the
services actually checked: critical > degraded > healthy; ``unknown`` when none was checked),
a summary of how many were checked, and the alert texts. A service that was not checked
(no target configured) is ``unknown``, never healthy.

Disk, memory and the MongoDB ping go through :class:`Probes`, so tests inject readings
(85 %, 95 %) or a dead store at this boundary.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import struct
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psutil
import requests
import yaml
from pydantic import BaseModel, Field, ValidationError

from core.exceptions import ConfigurationError
from core.schemas.monitoring import HealthReport, ServiceHealth
from core.settings import Settings

log = logging.getLogger(__name__)

CheckKind = Literal[
    "http", "mongodb", "prefect_api", "prefect_worker", "dask", "redis", "amqp", "disk", "memory"
]


class CheckSpec(BaseModel):
    """One configured check (an entry of ``checks:`` in the YAML file)."""

    name: str
    kind: CheckKind
    target: str | None = None
    target_setting: str | None = None
    work_pool: str | None = None
    work_pool_setting: str | None = None
    expected_status: int = 200
    slow_ms: float | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    warning_pct: float | None = None
    critical_pct: float | None = None


class HealthConfig(BaseModel):
    checks: list[CheckSpec]


def load_checks(path: str | Path) -> list[CheckSpec]:
    """Read the checks of a YAML file.

    Raises:
        ConfigurationError: file missing, not YAML, or an entry is invalid (named).
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as e:
        raise ConfigurationError(f"health check config {p} unreadable: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigurationError(f"health check config {p} is not valid YAML: {e}") from e
    try:
        return HealthConfig.model_validate(raw).checks
    except ValidationError as e:
        raise ConfigurationError(f"health check config {p} is invalid: {e}") from e


def _disk_usage_pct(path: str) -> float:
    """Used % of the file system holding ``path``."""
    usage = shutil.disk_usage(path)
    return 100.0 * usage.used / usage.total


@dataclass
class Probes:
    """Readings injected at the boundary.

    Attributes:
        disk_usage_pct: path -> used % of its file system (default: shutil.disk_usage).
        memory_usage_pct: () -> used % of RAM (default: psutil.virtual_memory().percent).
        mongo_ping: () -> round trip ms; raises when MongoDB does not answer (None: skipped).
    """

    disk_usage_pct: Callable[[str], float] = field(default=lambda p: _disk_usage_pct(p))
    memory_usage_pct: Callable[[], float] = field(
        default=lambda: float(psutil.virtual_memory().percent)
    )
    mongo_ping: Callable[[], float] | None = None


@dataclass
class CheckOutcome:
    """Raw outcome of one check before the consecutive-failure rule."""

    spec: CheckSpec
    ok: bool
    response_time_ms: float | None = None
    error: str | None = None
    value_pct: float | None = None
    skipped_note: str | None = None


# ------------------------------------------------------------ individual checks
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


# ------------------------------------------------------------ running
def resolve_target(
    spec: CheckSpec, settings: Settings, overrides: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """The check's target and, when unset, a note saying what to configure."""
    if spec.target:
        return spec.target, None
    if spec.target_setting:
        value = overrides.get(spec.target_setting, getattr(settings, spec.target_setting, None))
        if value:
            return str(value), None
        env = f"BOTAI_{spec.target_setting.upper()}"
        return None, f"not configured: set {env} to check {spec.name}"
    if spec.kind in ("http", "redis", "amqp", "dask", "prefect_api", "prefect_worker"):
        return None, f"not configured: give {spec.name} a target in the health check config"
    return None, None


def _run_one(
    spec: CheckSpec, settings: Settings, probes: Probes, overrides: Mapping[str, Any]
) -> CheckOutcome:
    timeout = spec.timeout_s or settings.health_check_timeout_s
    target, note = resolve_target(spec, settings, overrides)
    if note:
        return CheckOutcome(spec, ok=True, skipped_note=note)
    try:
        if spec.kind == "http":
            ms, err = check_http(str(target), spec.expected_status, timeout)
        elif spec.kind == "redis":
            ms, err = check_redis(str(target), timeout)
        elif spec.kind == "amqp":
            ms, err = check_amqp(str(target), timeout)
        elif spec.kind == "dask":
            ms, err = check_tcp(str(target), 8786, timeout)
        elif spec.kind == "prefect_api":
            ms, err = check_http(f"{str(target).rstrip('/')}/health", 200, timeout)
        elif spec.kind == "prefect_worker":
            pool = spec.work_pool or overrides.get(
                spec.work_pool_setting or "work_pool", settings.work_pool
            )
            auth = overrides.get("prefect_api_auth_string")
            ms, err = check_prefect_worker(str(target), str(pool), timeout, auth)
        elif spec.kind == "mongodb":
            if probes.mongo_ping is None:
                return CheckOutcome(spec, ok=True, skipped_note="not configured: no mongodb block")
            start = time.perf_counter()
            try:
                probes.mongo_ping()
                ms, err = (time.perf_counter() - start) * 1000, None
            except Exception as e:
                ms, err = (time.perf_counter() - start) * 1000, str(e) or type(e).__name__
        elif spec.kind == "disk":
            pct = probes.disk_usage_pct(str(target or "/"))
            return CheckOutcome(spec, ok=True, value_pct=float(pct))
        else:  # memory
            return CheckOutcome(spec, ok=True, value_pct=float(probes.memory_usage_pct()))
    except Exception as e:  # a check must never take the flow down
        return CheckOutcome(spec, ok=False, error=f"check failed: {type(e).__name__}: {e}")
    return CheckOutcome(spec, ok=err is None, response_time_ms=round(ms, 1), error=err)


def run_checks(
    specs: list[CheckSpec],
    settings: Settings,
    probes: Probes | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
    deadline_s: float | None = None,
) -> list[CheckOutcome]:
    """Run every check in parallel threads.

    Returns one outcome per spec, in order. A check still running at ``deadline_s`` (default
    ``settings.health_deadline_s``) is reported failed ("no answer within ...s"); its thread
    is abandoned (it ends at its own socket timeout). Never raises for a service's failure.
    """
    probes = probes or Probes()
    overrides = overrides or {}
    deadline = deadline_s or settings.health_deadline_s
    pool = ThreadPoolExecutor(max_workers=max(1, len(specs)), thread_name_prefix="health")
    futures = [pool.submit(_run_one, s, settings, probes, overrides) for s in specs]
    wait(futures, timeout=deadline)
    pool.shutdown(wait=False, cancel_futures=True)
    out = []
    for spec, fut in zip(specs, futures, strict=True):
        if fut.done() and not fut.cancelled():
            out.append(fut.result())
        else:
            out.append(CheckOutcome(spec, ok=False, error=f"no answer within {deadline:g}s"))
    return out


# ------------------------------------------------------------ classification
def apply_failure_state(
    outcomes: list[CheckOutcome],
    previous: Mapping[str, Mapping[str, Any]],
    settings: Settings,
) -> tuple[dict[str, ServiceHealth], dict[str, dict[str, Any]]]:
    """Classify outcomes using the previous consecutive-failure counts.

    A failing network check is ``failing`` the first time and ``down`` from the second
    consecutive failure; a success resets the count. Disk/memory are ``warning`` /
    ``critical`` at their thresholds (no confirmation needed).

    Returns:
        (services by name, new state by name ``{consecutive_failures, last_status, updated_at}``).
    """
    services: dict[str, ServiceHealth] = {}
    state: dict[str, dict[str, Any]] = {}
    now = datetime.now(UTC)
    for o in outcomes:
        s = o.spec
        if o.skipped_note:
            services[s.name] = ServiceHealth(
                name=s.name, kind=s.kind, status="unknown", note=o.skipped_note
            )
            continue
        if s.kind in ("disk", "memory"):
            if o.error is not None or o.value_pct is None:
                services[s.name] = ServiceHealth(
                    name=s.name, kind=s.kind, status="warning", error=o.error, severity="warning"
                )
                continue
            warn = s.warning_pct or (
                settings.disk_warning_pct if s.kind == "disk" else settings.memory_warning_pct
            )
            crit = s.critical_pct or (
                settings.disk_critical_pct if s.kind == "disk" else settings.memory_critical_pct
            )
            pct = round(o.value_pct, 1)
            if pct >= crit:
                status, sev = "critical", "critical"
            elif pct >= warn:
                status, sev = "warning", "warning"
            else:
                status, sev = "healthy", "ok"
            services[s.name] = ServiceHealth(
                name=s.name, kind=s.kind, status=status, value_pct=pct, severity=sev
            )
            continue
        prev = int(previous.get(s.name, {}).get("consecutive_failures", 0))
        if o.ok:
            slow_ms = s.slow_ms or settings.health_slow_ms
            slow = s.kind == "http" and (o.response_time_ms or 0) > slow_ms
            services[s.name] = ServiceHealth(
                name=s.name,
                kind=s.kind,
                status="slow" if slow else "healthy",
                response_time_ms=o.response_time_ms,
                severity="warning" if slow else "ok",
            )
            count = 0
        else:
            count = prev + 1
            down = count >= 2
            services[s.name] = ServiceHealth(
                name=s.name,
                kind=s.kind,
                status="down" if down else "failing",
                response_time_ms=o.response_time_ms,
                error=o.error,
                consecutive_failures=count,
                severity="critical" if down else "ok",
                note=None if down else "first failure: reported down if the next check fails too",
            )
        state[s.name] = {
            "consecutive_failures": count,
            "last_status": services[s.name].status,
            "updated_at": now.isoformat(),
        }
    return services, state


def alert_text(svc: ServiceHealth) -> str | None:
    """The spec's alert text of one service, or None when it needs no alert."""
    if svc.status == "down":
        return f"❌ {svc.name} is DOWN"
    if svc.status == "slow":
        return f"⚠️ {svc.name} slow response ({svc.response_time_ms:.0f}ms)"
    label = "Disk" if svc.kind == "disk" else "Memory"
    if svc.kind in ("disk", "memory") and svc.value_pct is not None:
        if svc.status == "critical":
            return f"❌ {label} usage critical: {svc.value_pct:.0f}%"
        if svc.status == "warning":
            return f"⚠️ {label} usage high: {svc.value_pct:.0f}%"
    if svc.kind in ("disk", "memory") and svc.status == "warning":
        return f"⚠️ {label} usage unknown: {svc.error}"
    return None


_RANK = {"healthy": 0, "degraded": 1, "critical": 2}


def overall_status(services: Mapping[str, ServiceHealth]) -> str:
    """The worst status of the checked services: critical (a service down / a resource
    critical) > degraded (slow, failing once, resource warning) > healthy.

    Returns:
        that status; ``"unknown"`` when no service was checked (all ``unknown``), since
        nothing is then known to be healthy.
    """
    checked = [svc for svc in services.values() if svc.status != "unknown"]
    if not checked:
        return "unknown"
    worst = "healthy"
    for svc in checked:
        if svc.severity == "critical":
            level = "critical"
        elif svc.severity == "warning" or svc.status == "failing":
            level = "degraded"
        else:
            level = "healthy"
        if _RANK[level] > _RANK[worst]:  # a later check never lowers it
            worst = level
    return worst


def summarize(services: Mapping[str, ServiceHealth]) -> str:
    """One line saying how many services were checked and what they showed.

    Returns:
        e.g. ``"5 of 11 checked: 4 healthy, 1 down; 6 not checked (not configured)"``;
        ``"0 of 3 checked; 3 not checked (not configured)"`` when none was.
    """
    counts: dict[str, int] = {}
    unchecked = 0
    for svc in services.values():
        if svc.status == "unknown":
            unchecked += 1
        else:
            counts[svc.status] = counts.get(svc.status, 0) + 1
    checked = len(services) - unchecked
    order = ["healthy", "slow", "warning", "failing", "down", "critical"]
    parts = [f"{counts[k]} {k}" for k in order if counts.get(k)]
    text = f"{checked} of {len(services)} checked"
    if parts:
        text += ": " + ", ".join(parts)
    if unchecked:
        text += f"; {unchecked} not checked (not configured)"
    return text


def build_report(
    services: dict[str, ServiceHealth], started: datetime, duration_ms: float
) -> HealthReport:
    """Assemble the report: overall status, the checked/unchecked summary and alerts
    (critical ones listed separately). Returns the :class:`HealthReport`."""
    alerts, critical = [], []
    for svc in services.values():
        text = alert_text(svc)
        if text:
            alerts.append(text)
            if svc.severity == "critical":
                critical.append(text)
    return HealthReport(
        created_at=started,
        overall_status=overall_status(services),  # type: ignore[arg-type]
        summary=summarize(services),
        checked_count=sum(1 for s in services.values() if s.status != "unknown"),
        unchecked=[n for n, s in services.items() if s.status == "unknown"],
        services=services,
        alerts=alerts,
        critical_alerts=critical,
        duration_ms=round(duration_ms, 1),
    )


# ------------------------------------------------------------ local fallback files
def append_jsonl(path: Path, doc: Mapping[str, Any]) -> None:
    """Append ``doc`` as one JSON line to ``path`` (folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(doc, default=str, ensure_ascii=False) + "\n")


def read_state_file(path: Path) -> dict[str, dict[str, Any]]:
    """The consecutive-failure state kept beside MongoDB (``{}`` when absent or unreadable)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_state_file(path: Path, state: Mapping[str, Any]) -> None:
    """Write the state file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, default=str))
    tmp.replace(path)
