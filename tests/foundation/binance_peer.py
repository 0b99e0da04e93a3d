"""A Binance-like ``/api/v3/klines`` for pytest-httpserver: hourly bars with known prices."""

from __future__ import annotations

import json

from werkzeug import Request, Response

HOUR_MS = 3_600_000


def kline(open_ms: int) -> list:
    price = 100 + (open_ms // HOUR_MS) % 50
    return [
        open_ms,
        f"{price:.2f}",
        f"{price + 1:.2f}",
        f"{price - 1:.2f}",
        f"{price + 0.5:.2f}",
        "10.5",
        open_ms + HOUR_MS - 1,
        f"{10.5 * price:.2f}",
        42,
        "5",
        "500",
        "0",
    ]


def klines_handler(request: Request) -> Response:
    """A Binance-like /api/v3/klines: 1h bars from startTime to endTime, at most `limit`."""
    start = int(request.args["startTime"])
    end = int(request.args["endTime"])
    limit = int(request.args.get("limit", 500))
    first = -(-start // HOUR_MS) * HOUR_MS
    rows = [kline(t) for t in range(first, end + 1, HOUR_MS)][:limit]
    return Response(json.dumps(rows), content_type="application/json")
