"""Notifier against a real SMTP server and a local Slack webhook: routing, cool-down,
delivery failures recorded (never raised), secrets kept out of results and logs."""

from __future__ import annotations

import logging

import pytest
from pytest_httpserver import HTTPServer

from integrations.notifications import EmailSender, Notifier, SlackSender
from integrations.store import Store
from tests.monitoring.helpers import SLACK_PATH, SMTP_PASSWORD, slack_messages
from tests.peers import Mailbox, free_port


def _senders(peer: HTTPServer, mailbox: Mailbox) -> tuple[SlackSender, EmailSender]:
    peer.expect_request(SLACK_PATH, method="POST").respond_with_data("ok")
    slack = SlackSender(peer.url_for(SLACK_PATH), channel="#alerts", timeout_s=2)
    email = EmailSender(
        "127.0.0.1", mailbox.port, "none", None, None, "bot@example.org", ["admin@example.org"], 2
    )
    return slack, email


@pytest.mark.tc("TC-ASYNC-032", "TC-ASYNC-034")
def test_routing_by_level_and_cooldown(peer: HTTPServer, mailbox: Mailbox, store: Store) -> None:
    slack, email = _senders(peer, mailbox)
    notifier = Notifier(slack, email, store, cooldown_s=3600)

    crit = notifier.notify("critical", "❌ MongoDB is DOWN", "ping failed twice")
    assert crit.delivered == ["slack", "email"] and not crit.failed and not crit.suppressed
    assert len(mailbox.messages) == 1
    assert "MongoDB is DOWN" in mailbox.messages[0]["Subject"]
    assert mailbox.messages[0]["X-Rcpt"] == "admin@example.org"
    body = slack_messages(peer)[0]
    assert "MongoDB is DOWN" in body["text"] and body["channel"] == "#alerts"

    warn = notifier.notify("warning", "⚠️ Disk usage high: 85%", "disk /")
    assert warn.attempted == ["slack"] and warn.delivered == ["slack"]
    assert len(mailbox.messages) == 1  # a warning is not e-mailed

    again = notifier.notify("critical", "❌ MongoDB is DOWN", "ping failed twice")
    assert again.suppressed and again.attempted == []
    assert len(mailbox.messages) == 1 and len(slack_messages(peer)) == 2

    urgent = notifier.notify("info", "LLM off", "cost", urgent=True)
    assert urgent.delivered == ["slack", "email"]
    assert "URGENT" in mailbox.messages[-1]["Subject"]

    rows = store.monitoring.alerts_find()
    assert [r["suppressed"] for r in rows] == [False, False, True, False]
    # no cool-down: the same alert goes out again
    assert (
        not Notifier(slack, email, store, cooldown_s=0)
        .notify("critical", "❌ MongoDB is DOWN", "ping failed twice")
        .suppressed
    )


@pytest.mark.tc("TC-ASYNC-047", "TC-ASYNC-099")
def test_delivery_failures_are_recorded_not_raised(
    peer: HTTPServer, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    secret_path = "/services/T1/B1/hook-secret-value"
    peer.expect_request(secret_path, method="POST").respond_with_data("down", status=500)
    slack = SlackSender(peer.url_for(secret_path), timeout_s=2)
    email = EmailSender(
        "127.0.0.1", free_port(), "none", "bot", SMTP_PASSWORD, "bot@example.org", ["a@b.org"], 2
    )
    caplog.set_level(logging.DEBUG)
    result = Notifier(slack, email, store, cooldown_s=60).notify("critical", "Engine down", "x")
    assert result.delivered == [] and set(result.failed) == {"slack", "email"}
    assert "500" in result.failed["slack"]
    assert "unreachable" in result.failed["email"]
    (row,) = store.monitoring.alerts_find({"title": "Engine down"})
    assert row["sent"] is False and set(row["failed"]) == {"slack", "email"}
    # a failed alert is not "sent": the next identical one is tried again
    assert (
        not Notifier(slack, email, store, cooldown_s=60)
        .notify("critical", "Engine down", "x")
        .suppressed
    )
    ours = "".join(r.getMessage() for r in caplog.records if not r.name.startswith("werkzeug"))
    text = ours + result.model_dump_json() + repr(slack) + repr(email) + str(row)
    assert "hook-secret-value" not in text and SMTP_PASSWORD not in text


@pytest.mark.tc("TC-ASYNC-045")
def test_unconfigured_channel_and_dead_store(peer: HTTPServer, mailbox: Mailbox) -> None:
    slack, _ = _senders(peer, mailbox)
    from integrations.store import connect

    dead = Store(connect(f"mongodb://127.0.0.1:{free_port()}/", timeout_ms=300), "x")
    result = Notifier(slack, None, dead, cooldown_s=60).notify("critical", "t", "m")
    assert result.delivered == ["slack"] and result.failed == {"email": "not configured"}
