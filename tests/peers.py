"""Local stand-ins for the outside services, shared by the test areas: a real SMTP server
(aiosmtpd) collecting messages, and helpers for pytest-httpserver peers (the Slack webhook
and the trading engine's envelope). The fixtures using them are in tests/conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from pytest_httpserver import HTTPServer

from integrations.embedded_mongo import free_port

__all__ = [
    "Mailbox",
    "envelope",
    "free_port",
    "restored_blocks",
    "save_channel_blocks",
    "slack_messages",
]


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


@contextlib.contextmanager
def restored_blocks(*classes: type) -> Iterator[None]:
    """Put the session server's documents of ``classes`` back as they were on exit: every
    area's tests share that server and may expect, say, no "llm" block."""
    from blocks.loader import load_block
    from core.exceptions import ConfigurationError

    before = {}
    for cls in classes:
        try:
            before[cls] = load_block(cls)
        except ConfigurationError:
            before[cls] = None
    try:
        yield
    finally:
        for cls, block in before.items():
            if block is not None:
                block.save(cls.document_name, overwrite=True)
            else:
                with contextlib.suppress(ValueError):  # ValueError: it was never created
                    cls.delete(cls.document_name)


def save_channel_blocks(peer: HTTPServer, mailbox: Mailbox, slack_path: str) -> None:
    """Save the slack, smtp and trading-engine blocks pointing at the local peers (the Slack
    webhook at ``slack_path`` answers ok; SMTP without TLS or login; the engine at ``/``)."""
    from blocks import SlackBlock, SMTPBlock, TradingEngineBlock

    peer.expect_request(slack_path, method="POST").respond_with_data("ok")
    SlackBlock(webhook_url=peer.url_for(slack_path), channel="#alerts").save(
        "slack", overwrite=True
    )
    SMTPBlock(
        host="127.0.0.1",
        port=mailbox.port,
        security="none",
        username=None,
        password=None,
        sender="bot@example.org",
        recipients=["admin@example.org"],
    ).save("smtp", overwrite=True)
    TradingEngineBlock(base_url=peer.url_for("/"), timeout_s=2.0).save(
        "trading-engine", overwrite=True
    )
