"""Self-improvement fixtures: one local HTTP peer serving the OpenAI-compatible chat API, the
engine API and the Slack webhook (pytest-httpserver); a real SMTP server (aiosmtpd); the
llm/slack/smtp/trading-engine blocks pointing at them (the server's documents restored after)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from pytest_httpserver import HTTPServer

from tests import peers
from tests.peers import Mailbox, envelope, free_port  # noqa: F401 (re-exported to the tests)

os.environ.setdefault("KERAS_BACKEND", "jax")

# Fixed values: pytest imports this file as "conftest" while tests may import it by path.
LLM_KEY = "sk-test-llm-key-7d3a9e51"
SLACK_PATH = "/services/T0/B0/slack-secret-c0ffee"
LLM_IN_USD_PER_1M = 30.0
LLM_OUT_USD_PER_1M = 60.0


def chat_completion(content: str, prompt_tokens: int = 500, completion_tokens: int = 200) -> dict:
    """An OpenAI chat-completions response body with ``content`` and usage counts."""
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1764300000,
        "model": "test-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def llm_requests(server: HTTPServer) -> list[dict]:
    return [json.loads(req.data) for req, _ in server.log if req.path == "/v1/chat/completions"]


def slack_messages(server: HTTPServer) -> list[dict]:
    return peers.slack_messages(server, SLACK_PATH)


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
