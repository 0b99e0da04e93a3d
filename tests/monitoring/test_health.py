"""Health checks against real peers: Redis and RabbitMQ on their local ports, a closed port,
a socket that never answers, a slow HTTP peer, a dead MongoDB; disk readings injected."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from core.settings import load_settings
from integrations.health import CheckSpec, Probes, load_checks
from integrations.notifications import EmailSender, Notifier, SlackSender
from integrations.service_checks import check_amqp, check_redis
from integrations.store import C, Store, connect
from tasks.monitoring import HEALTH_REPORTS_FILE, perform_health_check
from tests.monitoring.helpers import SLACK_PATH, slack_messages
from tests.peers import Mailbox, free_port

REDIS, RABBIT = "127.0.0.1:6379", "127.0.0.1:5672"


def _notifier(peer: HTTPServer, mailbox: Mailbox, store: Store | None) -> Notifier:
    peer.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    return Notifier(
        SlackSender(peer.url_for(SLACK_PATH), timeout_s=2),
        EmailSender("127.0.0.1", mailbox.port, "none", None, None, "b@x.org", ["a@x.org"], 2),
        store,
        cooldown_s=3600,
    )


def _probes(disk: float = 40.0, mem: float = 50.0) -> Probes:
    return Probes(disk_usage_pct=lambda _p: disk, memory_usage_pct=lambda: mem)


@pytest.mark.tc("TC-ASYNC-031", "TC-ASYNC-044")
def test_default_config_loads_and_unconfigured_is_unknown_not_healthy(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    specs = load_checks(settings.health_checks_path)
    names = [s.name for s in specs]
    for name in (
        "Rust Core Engine",
        "Python AI Service",
        "Frontend Dashboard",
        "MongoDB",
        "Redis",
        "RabbitMQ",
        "Disk",
        "Memory",
    ):
        assert name in names
    http_only = [s for s in specs if s.kind == "http"]
    report = perform_health_check(http_only, settings, None, None, probes=_probes())
    assert {s.status for s in report.services.values()} == {"unknown"}
    assert report.services["Rust Core Engine"].note == (
        "not configured: set BOTAI_RUST_ENGINE_URL to check Rust Core Engine"
    )
    # nothing was checked, so nothing is known to be healthy
    assert report.overall_status == "unknown"
    assert report.checked_count == 0 and len(report.unchecked) == len(http_only)
    assert (
        report.summary
        == f"0 of {len(http_only)} checked; {len(http_only)} not checked (not configured)"
    )


@pytest.mark.tc("TC-ASYNC-031")
def test_stock_install_counts_only_checked_services(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default config with only MongoDB, disk and memory reachable: the unconfigured
    services are ``unknown`` and named in the summary, not counted as healthy."""
    for var in (
        "BOTAI_RUST_ENGINE_URL",
        "BOTAI_PYTHON_AI_URL",
        "BOTAI_FRONTEND_URL",
        "BOTAI_REDIS_ADDRESS",
        "BOTAI_RABBITMQ_ADDRESS",
        "BOTAI_DASK_ADDRESS",
        "DASK_ADDRESS",
    ):
        monkeypatch.delenv(var, raising=False)
    settings = load_settings(state_dir=tmp_path)
    specs = [
        s for s in load_checks(settings.health_checks_path) if not s.kind.startswith("prefect")
    ]
    report = perform_health_check(specs, settings, store, None, probes=_probes())
    unknown = {n for n, s in report.services.items() if s.status == "unknown"}
    checked = {n for n, s in report.services.items() if s.status != "unknown"}
    assert checked == {"MongoDB", "Disk", "Memory"}, report.services
    assert unknown == set(report.unchecked) and len(unknown) == len(specs) - 3
    assert report.overall_status == "healthy" and report.checked_count == 3
    assert report.summary == (
        f"3 of {len(specs)} checked: 3 healthy; {len(unknown)} not checked (not configured)"
    )


@pytest.mark.tc("TC-ASYNC-031")
def test_all_healthy_with_real_redis_and_rabbitmq(
    peer: HTTPServer, mailbox: Mailbox, store: Store, tmp_path: Path
) -> None:
    assert check_redis(REDIS, 2)[1] is None, "local Redis must answer PING"
    assert check_amqp(RABBIT, 2)[1] is None, "local RabbitMQ must send Connection.Start"
    peer.expect_request("/api/health").respond_with_json({"success": True})
    specs = [
        CheckSpec(name="Rust Core Engine", kind="http", target=peer.url_for("/api/health")),
        CheckSpec(name="MongoDB", kind="mongodb"),
        CheckSpec(name="Redis", kind="redis", target=REDIS),
        CheckSpec(name="RabbitMQ", kind="amqp", target=RABBIT),
        CheckSpec(name="Disk", kind="disk", target="/"),
        CheckSpec(name="Memory", kind="memory"),
    ]
    settings = load_settings(state_dir=tmp_path)
    report = perform_health_check(
        specs, settings, store, _notifier(peer, mailbox, store), probes=_probes()
    )
    assert report.overall_status == "healthy" and report.alerts == []
    assert all(s.status == "healthy" for s in report.services.values()), report.services
    assert report.services["Rust Core Engine"].response_time_ms < 5000
    assert report.notifications == [] and slack_messages(peer) == [] and mailbox.messages == []
    assert report.saved_to == "mongodb" and store.col(C.HEALTH_REPORTS).count_documents({}) == 1


@pytest.mark.tc("TC-ASYNC-032", "TC-ASYNC-042")
def test_down_only_after_two_consecutive_failures(
    peer: HTTPServer, mailbox: Mailbox, store: Store, tmp_path: Path
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    specs = [CheckSpec(name="Redis", kind="redis", target=closed, timeout_s=1)]
    settings = load_settings(state_dir=tmp_path)
    notifier = _notifier(peer, mailbox, store)

    first = perform_health_check(specs, settings, store, notifier, probes=_probes())
    assert first.services["Redis"].status == "failing" and first.alerts == []
    assert first.overall_status == "degraded" and slack_messages(peer) == []

    second = perform_health_check(specs, settings, store, notifier, probes=_probes())
    assert second.services["Redis"].status == "down"
    assert second.services["Redis"].error.startswith("unreachable: ConnectionRefused")
    assert second.alerts == ["❌ Redis is DOWN"] and second.overall_status == "critical"
    assert second.notifications[0].delivered == ["slack", "email"]
    assert "Redis is DOWN" in mailbox.messages[0]["Subject"]
    assert store.health_state_all()["Redis"]["consecutive_failures"] == 2

    third = perform_health_check(specs, settings, store, notifier, probes=_probes())
    assert third.notifications[0].suppressed  # cool-down: no second e-mail
    assert len(mailbox.messages) == 1

    healed = perform_health_check(
        [CheckSpec(name="Redis", kind="redis", target=REDIS)],
        settings,
        store,
        notifier,
        probes=_probes(),
    )
    assert healed.services["Redis"].status == "healthy"
    assert store.health_state_all()["Redis"]["consecutive_failures"] == 0


@pytest.mark.tc("TC-ASYNC-033", "TC-ASYNC-034", "TC-ASYNC-035")
def test_slow_service_and_disk_thresholds(
    peer: HTTPServer, mailbox: Mailbox, store: Store, tmp_path: Path
) -> None:
    def slow(_req: object) -> Response:
        time.sleep(0.3)
        return Response("ok")

    peer.expect_request("/slow").respond_with_handler(slow)
    settings = load_settings(state_dir=tmp_path)
    notifier = _notifier(peer, mailbox, store)
    specs = [
        CheckSpec(name="Rust Core Engine", kind="http", target=peer.url_for("/slow"), slow_ms=200),
        CheckSpec(name="Disk", kind="disk", target="/"),
    ]
    r = perform_health_check(specs, settings, store, notifier, probes=_probes(disk=85.0))
    assert r.overall_status == "degraded"
    assert r.services["Rust Core Engine"].status == "slow"
    assert re.fullmatch(r"⚠️ Rust Core Engine slow response \(3\d\dms\)", r.alerts[0])
    assert r.alerts[1] == "⚠️ Disk usage high: 85%"
    assert r.notifications[0].level == "warning" and r.notifications[0].delivered == ["slack"]
    assert mailbox.messages == []

    r = perform_health_check(specs[1:], settings, store, notifier, probes=_probes(disk=95.0))
    assert r.overall_status == "critical" and r.alerts == ["❌ Disk usage critical: 95%"]
    assert r.notifications[0].delivered == ["slack", "email"]
    assert "Disk usage critical: 95%" in mailbox.messages[0]["Subject"]


@pytest.mark.tc("TC-ASYNC-043", "TC-ASYNC-044", "TC-ASYNC-045")
def test_everything_hanging_or_down_mongodb_too(hanging_address: str, tmp_path: Path) -> None:
    dead = Store(connect(f"mongodb://127.0.0.1:{free_port()}/", timeout_ms=500), "x")
    settings = load_settings(state_dir=tmp_path, health_deadline_s=1.5)
    specs = [
        CheckSpec(
            name="Rust Core Engine", kind="http", target=f"http://{hanging_address}/", timeout_s=1
        ),
        CheckSpec(name="Redis", kind="redis", target=hanging_address, timeout_s=1),
        CheckSpec(name="RabbitMQ", kind="amqp", target=hanging_address, timeout_s=10),
        CheckSpec(name="Dask Scheduler", kind="dask", target=f"tcp://127.0.0.1:{free_port()}"),
        CheckSpec(name="MongoDB", kind="mongodb"),
    ]
    host, port = hanging_address.split(":")
    # Slack and SMTP hang too: the alert may not push the check past its bound
    notifier = Notifier(
        SlackSender(f"http://{hanging_address}/hook", timeout_s=10),
        EmailSender(host, int(port), "none", None, None, "b@x.org", ["a@x.org"], 10),
        dead,
        cooldown_s=60,
    )
    for run, bound_s in ((1, 3.0), (2, 6.0)):  # run 2 alerts: deadline 1.5 + 3 s for delivery
        t0 = time.monotonic()
        report = perform_health_check(specs, settings, dead, notifier, probes=_probes())
        assert time.monotonic() - t0 < bound_s
        expected = "failing" if run == 1 else "down"
        assert {s.status for s in report.services.values()} == {expected}
    assert report.services["RabbitMQ"].error == "no answer within 1.5s"
    assert report.services["Redis"].error == "unreachable: TimeoutError"
    assert "❌ MongoDB is DOWN" in report.alerts and report.overall_status == "critical"
    path = tmp_path / HEALTH_REPORTS_FILE
    assert report.saved_to == str(path)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["services"]["MongoDB"]["status"] == "down"
    (sent,) = report.notifications
    assert sent.level == "critical" and sent.delivered == []
    assert set(sent.failed) == {"slack", "email"}
    assert all(r.startswith("no answer within") for r in sent.failed.values())


@pytest.mark.tc("TC-ASYNC-031")
@pytest.mark.parametrize("bad", ["checks: [{name: x, kind: ftp}]", "checks: [", "nothing: 1"])
def test_bad_config_is_a_clear_error(tmp_path: Path, bad: str) -> None:
    from core.exceptions import ConfigurationError

    p = tmp_path / "h.yaml"
    p.write_text(bad)
    with pytest.raises(ConfigurationError, match=f"health check config {p}"):
        load_checks(p)
