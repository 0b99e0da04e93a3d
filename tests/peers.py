"""Local stand-ins for the outside services, shared by the test areas: a real SMTP server
(aiosmtpd) collecting messages, helpers for pytest-httpserver peers (the Slack webhook and
the trading engine's envelope), and a real Prefect process worker serving a test work pool.
The fixtures using them are in tests/conftest.py."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any
from uuid import UUID

from pytest_httpserver import HTTPServer

from integrations.embedded_mongo import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "Mailbox",
    "create_process_deployment",
    "create_process_pool",
    "envelope",
    "free_port",
    "process_worker",
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


def create_process_pool(pool: str, queues: dict[str, int | None]) -> None:
    """Create a process work pool with ``queues`` (name -> concurrency limit or None)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        client.create_work_pool(
            WorkPoolCreate(
                name=pool,
                type="process",
                base_job_template=ProcessWorker.get_default_base_job_template(),
            )
        )
        for queue, limit in queues.items():
            client.create_work_queue(name=queue, work_pool_name=pool, concurrency_limit=limit)


def create_process_deployment(flow: Any, name: str, pool: str, queue: str, entrypoint: str) -> UUID:
    """Register ``flow`` as deployment ``name`` on ``pool``/``queue``, run from this checkout.

    Returns:
        the deployment id.
    """
    from prefect.client.orchestration import get_client
    from prefect.utilities.callables import parameter_schema

    with get_client(sync_client=True) as client:
        return client.create_deployment(
            flow_id=client.create_flow_from_name(flow.name),
            name=name,
            work_pool_name=pool,
            work_queue_name=queue,
            entrypoint=entrypoint,
            path=str(REPO_ROOT),
            parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
            pull_steps=[
                {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}
            ],
        )


@contextlib.contextmanager
def process_worker(pool: str, api_url: str, log_path: Path) -> Iterator[subprocess.Popen]:
    """A real ``prefect worker start`` on ``pool`` (polling every second) until the block ends.

    Its output goes to ``log_path``; the worker is terminated (killed after 20 s) on exit.
    """
    env = {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                pool,
                "--type",
                "process",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
