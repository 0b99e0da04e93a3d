"""From check outcomes to a health report: the consecutive-failure rule (a first failure is
``failing``, a second one ``down``), the alert texts, the overall status (the worst of the
services actually checked; ``unknown`` when none was) and the summary line.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.schemas.monitoring import HealthReport, ServiceHealth
from core.settings import Settings

if TYPE_CHECKING:
    from integrations.health import CheckOutcome


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
