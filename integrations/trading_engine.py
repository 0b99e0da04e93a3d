"""Client of the bot's Rust trading engine HTTP API (see docs/trading-engine-api.md).

Every answer is wrapped as ``{"success": bool, "data": ..., "error": str | null}``.
:class:`TradingEngineClient` unwraps it, retries timeouts, connection errors and HTTP 5xx with
exponential backoff, and raises errors that name the endpoint that failed:

* :class:`core.exceptions.ServiceUnavailableError` (retryable): no answer / timeout / 5xx after
  the retries, or a body that is not the envelope.
* :class:`core.exceptions.PeerRejectedError`: HTTP 4xx or ``success: false``.

The issue-6 strategy-control calls reuse :meth:`TradingEngineClient._request`.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import requests
from pydantic import BaseModel, Field

from core.exceptions import PeerRejectedError, RateLimitedError, ServiceUnavailableError

log = logging.getLogger(__name__)


class EngineEndpoints(BaseModel):
    """Paths of the engine API (relative to the base URL). Override to match a deployment."""

    health: str = Field(default="/api/health")
    portfolio: str = Field(default="/api/portfolio", description="GET: balance and trade stats.")
    closed_trades: str = Field(
        default="/api/trades/closed", description="GET ?since=ISO-8601: closed trades."
    )
    strategies: str = Field(default="/api/strategies", description="GET: strategies and state.")
    strategy_control: str = Field(
        default="/api/strategies/{name}/{action}",
        description="POST: enable/disable a strategy (issue 6).",
    )


class TradingEngineClient:
    """The engine API client.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080`` (no trailing slash needed).
        token: bearer token, or None (never logged or shown).
        timeout_s: timeout of one HTTP request.
        max_retries: extra attempts on timeouts/connection errors/5xx/429.
        backoff_s: first wait between attempts; doubles each retry.
        endpoints: the paths (defaults: :class:`EngineEndpoints`).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout_s: float = 10.0,
        max_retries: int = 3,
        backoff_s: float = 0.5,
        endpoints: EngineEndpoints | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.endpoints = endpoints or EngineEndpoints()

    def __repr__(self) -> str:
        return f"TradingEngineClient(base_url={self.base_url!r}, token={'***' if self._token else None})"

    # ------------------------------------------------------------ generic
    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        deadline: float | None = None,
    ) -> Any:
        """Call ``method path`` and return the envelope's ``data``.

        Args:
            deadline: ``time.monotonic()`` value by which the call must be over, retries
                included: each attempt's timeout is cut to the time left and no retry starts
                (or waits) past it. None: only ``timeout_s`` and ``max_retries`` bound the call.

        Raises:
            ServiceUnavailableError: timeouts/connection errors/5xx after ``max_retries``
                retries or at the deadline, or an answer that is not the engine envelope.
            RateLimitedError: 429 after the retries.
            PeerRejectedError: HTTP 4xx or ``success: false`` (message names the endpoint).
        """
        url = f"{self.base_url}{path}"
        where = f"{method.upper()} {path}"
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        last: Exception | None = None
        attempts, cut = 0, False
        for attempt in range(self.max_retries + 1):
            timeout = self.timeout_s
            if attempt:
                wait = self.backoff_s * 2 ** (attempt - 1)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    cut = True
                    break
                time.sleep(wait)
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0.05:
                    cut = True
                    break
            attempts += 1
            try:
                resp = requests.request(
                    method, url, params=params, json=json, headers=headers, timeout=timeout
                )
            except requests.Timeout:
                last = ServiceUnavailableError(
                    f"Trading engine {where} timed out after {round(timeout, 1):g}s"
                )
                log.warning("%s (attempt %d)", last, attempt + 1)
                continue
            except requests.RequestException as e:
                last = ServiceUnavailableError(
                    f"Trading engine {where} unreachable: {type(e).__name__}"
                )
                log.warning("%s (attempt %d)", last, attempt + 1)
                continue
            if resp.status_code == 429:
                last = RateLimitedError(f"Trading engine {where} answered 429 (rate limited)")
                continue
            if resp.status_code >= 500:
                last = ServiceUnavailableError(
                    f"Trading engine {where} answered HTTP {resp.status_code}"
                )
                log.warning("%s (attempt %d)", last, attempt + 1)
                continue
            body = _json_or_none(resp)
            error = body.get("error") if isinstance(body, dict) else None
            if resp.status_code >= 400:
                raise PeerRejectedError(
                    f"Trading engine {where} answered HTTP {resp.status_code}"
                    + (f": {error}" if error else "")
                )
            if not isinstance(body, dict) or "success" not in body:
                raise ServiceUnavailableError(
                    f"Trading engine {where} answered without the success/data/error envelope"
                )
            if not body["success"]:
                raise PeerRejectedError(
                    f"Trading engine {where} refused: {error or 'success=false without error'}"
                )
            return body.get("data")
        if last is None:  # the deadline passed before the first attempt
            raise ServiceUnavailableError(f"Trading engine {where}: deadline passed, not sent")
        if cut:
            raise type(last)(f"{last}; deadline reached after {attempts} attempt(s)")
        raise last

    # ------------------------------------------------------------ typed calls
    def health(self) -> Any:
        """GET health. Returns the envelope's data."""
        return self._request("GET", self.endpoints.health)

    def get_portfolio(self) -> dict[str, Any]:
        """GET the portfolio.

        Returns:
            the engine's portfolio dict: ``balance``, ``initial_balance``, ``total_return_percent``,
            ``total_trades``, ``winning_trades``, ``losing_trades``, ``average_profit_per_trade``,
            ``strategy_breakdown`` (any may be missing; reports compute what they can).
        """
        data = self._request("GET", self.endpoints.portfolio)
        if not isinstance(data, dict):
            raise ServiceUnavailableError(
                f"Trading engine GET {self.endpoints.portfolio} returned no portfolio object"
            )
        return data

    def get_closed_trades(self, since: datetime) -> list[dict[str, Any]]:
        """GET trades closed at or after ``since`` (UTC).

        Returns:
            trade dicts (``trade_id``, ``strategy``, ``symbol``, ``profit_pct``, ``pnl_usd``,
            ``closed_at``...). ``data`` may be a list or ``{"trades": [...]}``.
        """
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        data = self._request(
            "GET", self.endpoints.closed_trades, params={"since": since.isoformat()}
        )
        if isinstance(data, dict):
            data = data.get("trades")
        if not isinstance(data, list):
            raise ServiceUnavailableError(
                f"Trading engine GET {self.endpoints.closed_trades} returned no trade list"
            )
        return data

    def list_strategies(self) -> list[dict[str, Any]]:
        """GET the strategies. Returns dicts with at least ``name`` and ``enabled``."""
        data = self._request("GET", self.endpoints.strategies)
        if isinstance(data, dict):
            data = data.get("strategies", data)
        return list(data or [])


def _json_or_none(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return None
