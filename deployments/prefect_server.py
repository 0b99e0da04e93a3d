"""The stack's Prefect server: Prefect's own API and UI app (``create_app``, as
``prefect server start`` runs it), served by uvicorn behind one ASGI middleware that
retries, inside the server, a request its database refused as busy.

Why: on SQLite (the embedded default) a request whose transaction read first and then
writes is refused at once (``SQLITE_BUSY``, "database is locked") when another connection
committed in between: the server's services, the worker's polls and the runs' own state
changes commit several times a second. Prefect answers such a request 503, and Prefect's
client waits 2 s (then 4 s, 8 s...) before it asks again. Measured on an idle stack, one
request in eight waited those 2 s, which alone put request -> Running p95 near 2 s.
:class:`RetryBusyDatabase` replays the request after 10-320 ms instead: the failed
transaction was rolled back, so the replay is the same request the client would have sent
again (Prefect retries exactly these 503s), only sooner. After the last replay the 503
goes to the client as before.

Run: ``python -m deployments.prefect_server --host H --port P`` with the stack's
``PREFECT_*`` environment (``services.start_prefect_server`` does).
"""

from __future__ import annotations

import argparse
import json
import logging
import random

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

#: The body Prefect's API answers a retryable database error with (status 503).
BUSY_BODY = {"exception_message": "Service Unavailable"}

#: Replays after the first attempt, and the delay before the first one (doubling).
REPLAYS = 6
FIRST_DELAY_S = 0.01


class _Capture:
    """Forwards a response at once unless it is a 503, which it holds for a verdict."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.held: list[Message] = []
        self.status: int | None = None
        self.passing = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
            self.passing = self.status != 503
        if self.passing:
            await self._send(message)
        else:
            self.held.append(message)

    def busy(self) -> bool:
        """True when the held response is the API's answer to a busy database."""
        if self.status != 503:
            return False
        body = b"".join(m.get("body", b"") for m in self.held if m["type"] == "http.response.body")
        try:
            return json.loads(body) == BUSY_BODY
        except ValueError:
            return False

    async def flush(self) -> None:
        for message in self.held:
            await self._send(message)
        self.held = []


class RetryBusyDatabase:
    """ASGI middleware: replay an HTTP request whose answer was the API's 503 for a busy
    database, up to ``replays`` times with doubling, jittered delays.

    Every other response (and every websocket and lifespan message) passes through
    untouched; only a 503 is held until it is known whether to replay. The request body is
    read once and replayed from memory.
    """

    def __init__(
        self, app: ASGIApp, *, replays: int = REPLAYS, first_delay_s: float = FIRST_DELAY_S
    ) -> None:
        self.app = app
        self.replays = replays
        self.first_delay_s = first_delay_s
        self.replayed = 0  # requests that needed at least one replay (for tests and logs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body", False))
        body = b"".join(chunks)
        for attempt in range(self.replays + 1):
            last = attempt == self.replays
            capture = _Capture(send)
            try:
                # the app's routers rewrite the scope they are given (the mounted path):
                # every attempt starts from the request as it arrived
                attempt_scope = {**scope}
                if "state" in scope:
                    attempt_scope["state"] = {**scope["state"]}
                await self.app(attempt_scope, _replay(body, receive), capture)
            except Exception:
                if last or not capture.busy():
                    await capture.flush()
                    raise
            else:
                if last or not capture.busy():
                    await capture.flush()
                    return
            if attempt == 0:
                self.replayed += 1
            delay = self.first_delay_s * 2**attempt
            log.debug(
                "%s %s: database busy, replay %d in %.0f ms",
                scope.get("method"),
                scope.get("path"),
                attempt + 1,
                delay * 1000,
            )
            await anyio.sleep(delay * random.uniform(1.0, 1.5))  # noqa: S311 - jitter only


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands out ``body`` once, then waits on the real one (disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def main(argv: list[str] | None = None) -> None:
    """``python -m deployments.prefect_server --host H --port P [--no-services]``: serve
    Prefect's API and UI (with its background services unless ``--no-services``) until
    SIGTERM/SIGINT, as ``prefect server start``."""
    parser = argparse.ArgumentParser(prog="python -m deployments.prefect_server")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--no-services",
        action="store_true",
        help="only the API and UI, as `prefect server start --no-services` (the background "
        "services run in a process of their own: deployments/ha.py)",
    )
    args = parser.parse_args(argv)

    import uvicorn
    from prefect.server.api.server import create_app
    from prefect.settings import (
        PREFECT_SERVER_API_KEEPALIVE_TIMEOUT,
        PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL,
        PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT,
        PREFECT_SERVER_LOGGING_LEVEL,
    )

    app = RetryBusyDatabase(create_app(final=True, webserver_only=args.no_services))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        timeout_keep_alive=PREFECT_SERVER_API_KEEPALIVE_TIMEOUT.value(),
        ws_ping_interval=PREFECT_SERVER_API_WEBSOCKET_PING_INTERVAL.value(),
        ws_ping_timeout=PREFECT_SERVER_API_WEBSOCKET_PING_TIMEOUT.value(),
        log_level=str(PREFECT_SERVER_LOGGING_LEVEL.value()).lower(),
    )


if __name__ == "__main__":
    main()
