"""Helpers of the self-improvement tests: the LLM peer's key and prices, the Slack webhook path,
OpenAI chat-completions bodies and what the peer received."""

from __future__ import annotations

import json

from pytest_httpserver import HTTPServer

from tests import peers

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
