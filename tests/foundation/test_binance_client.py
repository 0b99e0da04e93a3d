"""The Binance client against a local klines server: pagination, 429 back-off, error classes,
an unreachable host, malformed rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from core.exceptions import PeerRejectedError, RateLimitedError, ServiceUnavailableError
from integrations.embedded_mongo import free_port
from integrations.market_data.binance import BinanceClient
from integrations.market_data.pipeline import store_candles
from integrations.store import Store
from tests.foundation.binance_peer import HOUR_MS, kline, klines_handler

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _client(server: HTTPServer, sleeps: list[float], **kw) -> BinanceClient:
    return BinanceClient(
        server.url_for("/").rstrip("/"), sleep=sleeps.append, now=lambda: NOW, **kw
    )


@pytest.mark.tc("none")
def test_binance_paginates_beyond_1000_bars(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v3/klines").respond_with_handler(klines_handler)
    sleeps: list[float] = []
    got = _client(httpserver, sleeps).fetch_klines("BTCUSDT", "1h", T0, T0 + timedelta(hours=2500))
    assert len(got.frame) == 2500 and got.requests == 3 and got.rejected == 0
    assert got.frame.index[0] == pd.Timestamp(T0) and got.frame.index.is_unique
    assert (np.diff(got.frame.index.asi8) == np.diff(got.frame.index.asi8)[0]).all()
    pages = [int(r.args["startTime"]) for r, _ in httpserver.log]
    assert pages == [int(T0.timestamp() * 1000) + i * 1000 * HOUR_MS for i in range(3)]
    assert all(r.args["limit"] == "1000" and r.args["interval"] == "1h" for r, _ in httpserver.log)
    assert got.frame["trades_count"].iloc[0] == 42 and sleeps == []


@pytest.mark.tc("TC-ASYNC-082")
def test_binance_honours_429_retry_after_then_succeeds(httpserver: HTTPServer) -> None:
    httpserver.expect_ordered_request("/api/v3/klines").respond_with_response(
        Response(
            '{"code":-1003,"msg":"Too many requests"}', status=429, headers={"Retry-After": "7"}
        )
    )
    httpserver.expect_ordered_request("/api/v3/klines").respond_with_handler(klines_handler)
    sleeps: list[float] = []
    got = _client(httpserver, sleeps).fetch_klines("BTCUSDT", "1h", T0, T0 + timedelta(hours=10))
    assert len(got.frame) == 10 and got.requests == 2
    assert sleeps == [7.0]


def _errors_handler(request: Request) -> Response:
    symbol = request.args["symbol"]
    if symbol == "BADUSDT":
        return Response('{"code":-1121,"msg":"Invalid symbol."}', status=400)
    if symbol == "BANUSDT":
        return Response("", status=418, headers={"Retry-After": "3600"})
    return Response("oops", status=503)


@pytest.mark.tc("TC-ASYNC-082")
def test_binance_errors_are_classified(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v3/klines").respond_with_handler(_errors_handler)
    sleeps: list[float] = []
    end = T0 + timedelta(hours=2)
    with pytest.raises(PeerRejectedError, match="Invalid symbol"):
        _client(httpserver, sleeps).fetch_klines("BADUSDT", "1h", T0, end)
    assert sleeps == []  # a 4xx is never retried
    with pytest.raises(ServiceUnavailableError, match="503"):
        _client(httpserver, sleeps, max_retries=3).fetch_klines("DOWNUSDT", "1h", T0, end)
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff, then give up
    with pytest.raises(RateLimitedError) as e:
        _client(httpserver, sleeps).fetch_klines("BANUSDT", "1h", T0, end)
    assert e.value.retry_after_s == 3600.0 and sleeps == [0.5, 1.0, 2.0]  # not waited here


@pytest.mark.tc("TC-ASYNC-082")
def test_binance_unreachable_is_retried_then_service_unavailable() -> None:
    sleeps: list[float] = []
    dead = BinanceClient(
        f"http://127.0.0.1:{free_port()}", max_retries=2, sleep=sleeps.append, timeout_s=1
    )
    with pytest.raises(ServiceUnavailableError, match="did not answer"):
        dead.fetch_klines("BTCUSDT", "1h", T0, T0 + timedelta(hours=2))
    assert sleeps == [0.5, 1.0] and dead.requests_made == 3
    assert dead.ping(0.5) is False


@pytest.mark.tc("TC-ASYNC-027")
def test_binance_malformed_rows_rejected_and_reported(httpserver: HTTPServer, store: Store) -> None:
    t = int(T0.timestamp() * 1000)
    rows = [
        kline(t),
        ["garbage"],
        [t + HOUR_MS, "abc", "1", "1", "1", "1", 0, "1", 1],
        kline(t + 2 * HOUR_MS),
        [t + 4 * HOUR_MS, "NaN", "1", "1", "1", "1", 0, "1", 1],
    ]
    bad_ohlc = kline(t + 3 * HOUR_MS)
    bad_ohlc[2] = "1.0"  # high below low
    rows.append(bad_ohlc)
    httpserver.expect_request("/api/v3/klines").respond_with_json(rows)
    got = _client(httpserver, []).fetch_klines("BTCUSDT", "1h", T0, T0 + timedelta(hours=5))
    assert got.rejected == 2 and got.examples[0].reason == "malformed_row"
    assert "garbage" in got.examples[0].values["raw"] and "abc" in got.examples[1].values["raw"]
    from core.schemas.market_data import QualityReport

    prior = QualityReport(
        rows_in=len(rows),
        rows_kept=len(got.frame),
        rejected={"malformed_row": 2},
        examples=got.examples,
    )
    [res] = store_candles(store, "BTCUSDT", "1h", got.frame, source="binance", prior=prior)
    assert res.inserted == 2
    assert res.quality.rejected == {"malformed_row": 2, "nan_or_inf": 1, "high_below_low": 1}
    assert res.rejected == 4
