"""Health checks of the platform's services (pure: no Prefect import).

Flow: :func:`load_checks` reads ``config/health_checks.yaml`` -> :func:`run_checks` runs every
check (:mod:`integrations.service_checks`) in parallel threads, each with its own timeout and
all within one deadline -> :func:`integrations.health_status.apply_failure_state` turns a first
failure into ``failing`` and a second consecutive one into ``down`` ->
:func:`integrations.health_status.build_report` computes the overall status (the worst of the
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
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil
import yaml
from pydantic import BaseModel, Field, ValidationError

from core.exceptions import ConfigurationError
from core.settings import Settings
from integrations.service_checks import (
    check_amqp,
    check_http,
    check_prefect_worker,
    check_redis,
    check_tcp,
)

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
