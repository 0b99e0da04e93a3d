"""Monitoring fixtures: a real SMTP server (aiosmtpd), an HTTP peer for the Slack webhook and
the engine (pytest-httpserver), a socket that accepts and never answers, a closed port, and
the slack/smtp/trading-engine blocks pointing at them (restored afterwards)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from pytest_httpserver import HTTPServer

from tests import peers
from tests.monitoring.helpers import SLACK_PATH
from tests.peers import Mailbox


@pytest.fixture
def hanging_address() -> Iterator[str]:
    """``host:port`` of a socket that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = srv.accept()
                held.append(conn)

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(2)
    for c in held:
        c.close()
    srv.close()


@pytest.fixture
def channel_blocks(prefect_server: str, peer: HTTPServer, mailbox: Mailbox) -> Iterator[None]:
    """Save slack/smtp/trading-engine blocks on the test server pointing at the local peers;
    put the server's documents back afterwards (other areas share it)."""
    from blocks import MongoDBBlock, SlackBlock, SMTPBlock, TradingEngineBlock

    with peers.restored_blocks(SlackBlock, SMTPBlock, TradingEngineBlock, MongoDBBlock):
        peers.save_channel_blocks(peer, mailbox, SLACK_PATH)
        yield
