"""TradingEngineClient against a local HTTP server speaking the engine's envelope."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from core.exceptions import PeerRejectedError, ServiceUnavailableError
from integrations.trading_engine import EngineEndpoints, TradingEngineClient
from tests.peers import envelope


@pytest.mark.tc("TC-ASYNC-036", "TC-ASYNC-099")
def test_envelope_token_and_paths(peer: HTTPServer) -> None:
    peer.expect_request(
        "/api/portfolio", headers={"Authorization": "Bearer tok-123"}
    ).respond_with_json(envelope({"balance": 10542.75}))
    peer.expect_request(
        "/v2/closed", query_string={"since": "2026-11-21T00:00:00+00:00"}
    ).respond_with_json(envelope({"trades": [{"trade_id": "t1", "profit_pct": 1.5}]}))
    peer.expect_request("/api/strategies").respond_with_json(
        envelope([{"name": "rsi", "enabled": True}])
    )
    client = TradingEngineClient(
        peer.url_for("/"), token="tok-123", endpoints=EngineEndpoints(closed_trades="/v2/closed")
    )
    assert client.get_portfolio() == {"balance": 10542.75}
    assert client.get_closed_trades(datetime(2026, 11, 21, tzinfo=UTC))[0]["trade_id"] == "t1"
    assert client.list_strategies() == [{"name": "rsi", "enabled": True}]
    assert "tok-123" not in repr(client)


@pytest.mark.tc("TC-ASYNC-082")
def test_rejections_name_the_endpoint(peer: HTTPServer) -> None:
    peer.expect_request("/api/portfolio").respond_with_json(
        {"success": False, "data": None, "error": "portfolio not initialised"}
    )
    peer.expect_request("/api/strategies").respond_with_json(
        {"success": False, "data": None, "error": "forbidden"}, status=403
    )
    client = TradingEngineClient(peer.url_for("/"), max_retries=0)
    with pytest.raises(PeerRejectedError, match="GET /api/portfolio refused: portfolio not init"):
        client.get_portfolio()
    with pytest.raises(PeerRejectedError, match="GET /api/strategies answered HTTP 403: forbidden"):
        client.list_strategies()


@pytest.mark.tc("TC-ASYNC-082")
def test_retries_5xx_with_backoff_then_succeeds(peer: HTTPServer) -> None:
    calls = []

    def flaky(_req: object) -> Response:
        calls.append(time.monotonic())
        if len(calls) < 3:
            return Response("busy", status=503)
        return Response(
            '{"success": true, "data": {"balance": 1.0}, "error": null}',
            200,
            content_type="application/json",
        )

    peer.expect_request("/api/portfolio").respond_with_handler(flaky)
    client = TradingEngineClient(peer.url_for("/"), max_retries=3, backoff_s=0.05)
    assert client.get_portfolio() == {"balance": 1.0}
    assert len(calls) == 3
    assert calls[2] - calls[1] >= 0.09  # the wait doubled


@pytest.mark.tc("TC-ASYNC-082")
def test_timeouts_and_persistent_5xx_are_retryable(peer: HTTPServer, hanging_address: str) -> None:
    peer.expect_request("/api/strategies").respond_with_data("boom", status=500)
    with pytest.raises(ServiceUnavailableError, match="GET /api/strategies answered HTTP 500"):
        TradingEngineClient(peer.url_for("/"), max_retries=2, backoff_s=0.01).list_strategies()
    assert len(peer.log) == 3
    hanging = TradingEngineClient(
        f"http://{hanging_address}", timeout_s=0.3, max_retries=1, backoff_s=0.01
    )
    t0 = time.monotonic()
    with pytest.raises(ServiceUnavailableError, match="GET /api/portfolio timed out after 0.3s"):
        hanging.get_portfolio()
    assert time.monotonic() - t0 < 3
