"""The stack's Prefect server middleware: a request the database refused as busy is
replayed inside the server (no 2 s client back-off), the same request each time; every
other answer passes through once and untouched.

The app under the middleware is a real FastAPI app mounted at ``/api`` with Prefect's own
exception handler, whose endpoint raises the error SQLite gives a transaction whose
snapshot went stale (``sqlite3.OperationalError: database is locked``), the fault at the
database boundary. The whole stack runs on this server in every stack test.
"""

from __future__ import annotations

import sqlite3

import anyio
import httpx
import pytest
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from prefect.server.api.server import custom_internal_exception_handler

from deployments.prefect_server import BUSY_BODY, RetryBusyDatabase


def _app(busy_times: int, seen: list[bytes], error: Exception | None = None) -> FastAPI:
    api = FastAPI()
    api.add_exception_handler(Exception, custom_internal_exception_handler)

    @api.post("/items")
    async def create_item(request: Request) -> dict:
        seen.append(await request.body())
        if len(seen) <= busy_times:
            raise sqlalchemy.exc.OperationalError(
                "INSERT INTO flow_run ...", {}, sqlite3.OperationalError("database is locked")
            )
        if error is not None:
            raise error
        return {"created": len(seen)}

    @api.get("/unavailable")
    async def unavailable() -> JSONResponse:
        seen.append(b"")
        return JSONResponse({"detail": "maintenance"}, status_code=503)

    root = FastAPI()
    root.mount("/api", api)  # the mount rewrites the scope: a replay must not see that
    return root


def _call(app: RetryBusyDatabase, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return anyio.run(go)


@pytest.mark.tc("TC-ASYNC-088")
def test_a_busy_database_is_replayed_in_the_server_with_the_same_body():
    seen: list[bytes] = []
    app = RetryBusyDatabase(_app(busy_times=2, seen=seen), first_delay_s=0.001)
    response = _call(app, "POST", "/api/items", json={"symbol": "BTCUSDT"})
    assert response.status_code == 200, response.text
    assert response.json() == {"created": 3}
    assert seen == [b'{"symbol":"BTCUSDT"}'] * 3
    assert app.replayed == 1


@pytest.mark.tc("TC-ASYNC-088")
def test_a_database_busy_past_every_replay_answers_503_as_before():
    seen: list[bytes] = []
    app = RetryBusyDatabase(_app(busy_times=100, seen=seen), replays=3, first_delay_s=0.001)
    response = _call(app, "POST", "/api/items", json={"symbol": "BTCUSDT"})
    assert response.status_code == 503
    assert response.json() == BUSY_BODY  # Prefect's client then backs off and asks again
    assert len(seen) == 4


@pytest.mark.tc("TC-ASYNC-088")
def test_other_errors_and_other_503s_are_answered_once():
    seen: list[bytes] = []
    failing = RetryBusyDatabase(_app(0, seen, error=ValueError("bad")), first_delay_s=0.001)
    response = _call(failing, "POST", "/api/items", json={})
    assert response.status_code == 500 and len(seen) == 1
    seen.clear()
    response = _call(failing, "GET", "/api/unavailable")
    assert response.status_code == 503 and response.json() == {"detail": "maintenance"}
    assert len(seen) == 1 and failing.replayed == 0
