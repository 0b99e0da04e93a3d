"""Local stand-ins for the outside services, shared by the test areas: a real SMTP server
(aiosmtpd) collecting messages, and helpers for pytest-httpserver peers (the Slack webhook
and the trading engine's envelope). The fixtures using them are in tests/conftest.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from pytest_httpserver import HTTPServer

from integrations.embedded_mongo import free_port

__all__ = ["Mailbox", "envelope", "free_port", "slack_messages"]


@dataclass
class Mailbox:
    """Messages received by the local SMTP server (recipients in the ``X-Rcpt`` header)."""

    port: int
    messages: list[Message] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        msg = message_from_bytes(envelope.content)
        msg["X-Rcpt"] = ", ".join(envelope.rcpt_tos)
        self.messages.append(msg)
        return "250 OK"


def envelope(data: Any) -> dict:
    """The trading engine's success envelope around ``data``."""
    return {"success": True, "data": data, "error": None}


def slack_messages(server: HTTPServer, path: str) -> list[dict]:
    """JSON bodies the Slack webhook at ``path`` received."""
    return [req.get_json() for req, _ in server.log if req.path == path]
