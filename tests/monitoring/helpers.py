"""Helpers of the monitoring tests: the Slack webhook's secret path, the SMTP password and what
the webhook received."""

from __future__ import annotations

from pytest_httpserver import HTTPServer

from tests import peers

SLACK_SECRET = "slack-webhook-secret-4f1c2d"
SMTP_PASSWORD = "smtp-password-9b7e31"
SLACK_PATH = f"/services/T0/B0/{SLACK_SECRET}"


def slack_messages(server: HTTPServer) -> list[dict]:
    """JSON bodies the Slack webhook received."""
    return peers.slack_messages(server, SLACK_PATH)
