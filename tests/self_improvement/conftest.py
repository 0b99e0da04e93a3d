"""Self-improvement fixtures: one local HTTP peer serving the OpenAI-compatible chat API, the
engine API and the Slack webhook (pytest-httpserver); a real SMTP server (aiosmtpd); the
llm/slack/smtp/trading-engine blocks pointing at them (the server's documents restored after)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests import peers
from tests.peers import Mailbox
from tests.self_improvement.helpers import (
    LLM_IN_USD_PER_1M,
    LLM_KEY,
    LLM_OUT_USD_PER_1M,
    SLACK_PATH,
)

os.environ.setdefault("KERAS_BACKEND", "jax")


@pytest.fixture
def blocks_env(
    prefect_server: str,
    peer: HTTPServer,
    mailbox: Mailbox,
    mongo_block,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """llm/slack/smtp/trading-engine blocks on the local peers (restored afterwards); no LLM
    backoff waits. Returns the test's Store."""
    from blocks import LLMBlock, SlackBlock, SMTPBlock, TradingEngineBlock

    monkeypatch.setenv("BOTAI_LLM_BACKOFF_S", "0")
    with peers.restored_blocks(LLMBlock, SlackBlock, SMTPBlock, TradingEngineBlock):
        LLMBlock(
            api_key=LLM_KEY,
            base_url=peer.url_for("/v1"),
            model="test-model",
            input_usd_per_1m=LLM_IN_USD_PER_1M,
            output_usd_per_1m=LLM_OUT_USD_PER_1M,
            timeout_s=1.0,
        ).save("llm", overwrite=True)
        peers.save_channel_blocks(peer, mailbox, SLACK_PATH)
        yield mongo_block
