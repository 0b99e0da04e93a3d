"""Helpers of the gateway's contract fuzz (tests/api/test_contract_fuzz.py).

* :func:`register_job_deployments`: every job's deployment on one work pool nobody serves,
  so a valid request creates a real flow run that stays queued.
* :func:`satisfies_cross_field_rules`: the rules a request body's schema states in
  ``x-cross-field-rules`` (JSON Schema cannot compare two values), checked here
  independently of the gateway's validators, so the fuzz sends as "valid" only bodies that
  keep them.
* :class:`Ledger`: an ASGI wrapper recording every answer to ``POST /api/tasks/{job}``, to
  compare the 202 answers with the runs and quota slots the store and Prefect hold.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.jobs import JOBS


def register_job_deployments(pool: str) -> list[Any]:
    """Create process work pool ``pool`` with one queue and every job's deployment on it.

    Returns:
        the deployments' ids (the caller deletes them: later tests of the session's server
        rely on which jobs are deployed there).
    """
    from prefect.client.orchestration import get_client

    from tests.peers import create_process_pool

    create_process_pool(pool, {"fuzz": None})
    ids = []
    with get_client(sync_client=True) as client:
        for job in JOBS.values():
            flow_name, name = job.deployment.split("/")
            deployment_id = client.create_deployment(
                flow_id=client.create_flow_from_name(flow_name),
                name=name,
                work_pool_name=pool,
                work_queue_name="fuzz",
                entrypoint=f"flows/{flow_name.replace('-', '_')}.py:{flow_name.replace('-', '_')}",
            )
            ids.append(deployment_id)
    return ids


def _day(value: Any) -> date | None:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        return None


def _moment(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _dates_ordered(body: dict[str, Any]) -> bool:
    start, end = _day(body.get("start_date")), _day(body.get("end_date"))
    return start is None or end is None or end > start


def _strategy(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    params = body.get("parameters")
    if body.get("strategy_name", "rsi") != name or not isinstance(params, dict):
        return None
    return params


def _rsi_levels(body: dict[str, Any]) -> bool:
    params = _strategy(body, "rsi")
    return params is None or params.get("oversold", 30.0) < params.get("overbought", 70.0)


def _macd_order(body: dict[str, Any]) -> bool:
    params = _strategy(body, "macd")
    return params is None or params.get("fast", 12) < params.get("slow", 26)


def _start_before_end(body: dict[str, Any]) -> bool:
    start, end = _moment(body.get("start")), _moment(body.get("end"))
    return start is None or end is None or start < end


def _no_csv_path(body: dict[str, Any]) -> bool:
    # the data folders are the gateway's configuration: a generated path is never in one
    return body.get("csv_path") is None


#: Each rule name a schema may state in ``x-cross-field-rules``, and its check.
CROSS_FIELD_CHECKS: dict[str, Callable[[dict[str, Any]], bool]] = {
    "end_date after start_date": _dates_ordered,
    "parameters: oversold below overbought (rsi)": _rsi_levels,
    "parameters: fast below slow (macd)": _macd_order,
    "start before end": _start_before_end,
    "csv_path in a data folder": _no_csv_path,
}


def satisfies_cross_field_rules(rules: list[str], body: Any) -> bool:
    """Whether ``body`` keeps every rule named in ``rules``.

    Raises:
        KeyError: a rule this module has no check for (the schema states a new rule).
    """
    if not isinstance(body, dict):
        return True
    return all(CROSS_FIELD_CHECKS[rule](body) for rule in rules)


@dataclass
class Answer:
    """One answer to ``POST /api/tasks/{job}``."""

    job: str
    status: int
    body: Any


@dataclass
class Ledger:
    """ASGI wrapper around the gateway recording the answers to job requests."""

    app: ASGIApp
    answers: list[Answer] = field(default_factory=list)
    #: who sent each generated request (the test's own bookkeeping)
    calls: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if scope.get("method") != "POST" or not path.startswith("/api/tasks/"):
            await self.app(scope, receive, send)
            return
        status, chunks = 0, []

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, record)
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.answers.append(Answer(path.removeprefix("/api/tasks/"), status, body))

    def accepted(self) -> set[str]:
        """Task ids of the 202 answers that created a run (not replays)."""
        return {
            a.body["task_id"]
            for a in self.answers
            if a.status == 202 and not a.body.get("replayed")
        }
