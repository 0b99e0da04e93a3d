"""Binance public klines REST API (``GET /api/v3/klines``): no key needed.

Pagination at 1,000 bars a request; HTTP 429/418 honour ``Retry-After`` (seconds); 5xx,
timeouts and connection errors are retried with exponential backoff. The sleep function
is injectable so tests run without waiting. Malformed rows are rejected and reported,
never fatal. Bars still open at request time (close time in the future) are not returned.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import requests

from core.exceptions import (
    PeerRejectedError,
    RateLimitedError,
    ServiceUnavailableError,
)
from core.market import bar_length
from core.schemas.market_data import RejectedRow

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
#: Our timeframes are Binance interval names as they are.
INTERVALS = ("5m", "15m", "1h", "4h", "1d")


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


@dataclass
class KlinesResult:
    """Klines fetched for one symbol and interval.

    Attributes:
        frame: ``open, high, low, close, volume, quote_volume, trades_count`` indexed by UTC
            bar open time, oldest first (not yet quality-checked).
        rejected: malformed rows (first few kept as examples in ``examples``).
        requests: HTTP requests made, retries included.
    """

    frame: pd.DataFrame
    rejected: int = 0
    examples: list[RejectedRow] = field(default_factory=list)
    requests: int = 0


class BinanceClient:
    """Client of the Binance public market-data REST API.

    Args:
        base_url: e.g. ``https://api.binance.com`` (``Settings.binance_base_url``).
        timeout_s: timeout of one request.
        max_retries: retries of one request on 429/418/5xx/timeouts before giving up.
        backoff_s: first backoff delay for 5xx/timeouts; doubles each retry.
        max_retry_after_s: a Retry-After longer than this is not waited for here: the call
            raises :class:`RateLimitedError` at once (the Prefect task retries later).
        sleep: called with seconds to wait (``time.sleep``; tests pass a recorder).
        now: returns the current UTC time (bars not closed by then are dropped).
    """

    def __init__(
        self,
        base_url: str = "https://api.binance.com",
        *,
        timeout_s: float = 10.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        max_retry_after_s: float = 120.0,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_retry_after_s = max_retry_after_s
        self.sleep = sleep
        self.now = now
        self.requests_made = 0
        self._session: requests.Session | None = None

    # ------------------------------------------------------------ HTTP
    def _get(self, path: str, params: dict[str, Any], *, timeout_s: float | None = None) -> Any:
        """GET ``path`` with retries. Returns the decoded JSON.

        Raises:
            RateLimitedError: 429/418 still after the retries (or Retry-After too long).
            ServiceUnavailableError: 5xx, timeouts or connection errors after the retries.
            PeerRejectedError: any other 4xx (e.g. an unknown symbol), with Binance's message.
        """
        if self._session is None:
            self._session = requests.Session()
        url = f"{self.base_url}{path}"
        attempt = 0
        while True:
            self.requests_made += 1
            try:
                resp = self._session.get(url, params=params, timeout=timeout_s or self.timeout_s)
            except (requests.Timeout, requests.ConnectionError) as e:
                error: Exception = ServiceUnavailableError(
                    f"Binance {path} did not answer: {type(e).__name__}"
                )
                wait = self.backoff_s * 2**attempt
            else:
                if resp.status_code == 200:
                    try:
                        return resp.json()
                    except ValueError as e:
                        raise ServiceUnavailableError(f"Binance {path} answered non-JSON") from e
                if resp.status_code in (429, 418):
                    retry_after = _retry_after(resp)
                    error = RateLimitedError(
                        f"Binance rate limit (HTTP {resp.status_code}); retry after "
                        f"{retry_after if retry_after is not None else 'unknown'} s",
                        retry_after_s=retry_after,
                    )
                    wait = retry_after if retry_after is not None else self.backoff_s * 2**attempt
                    if wait > self.max_retry_after_s:
                        raise error
                elif resp.status_code >= 500:
                    error = ServiceUnavailableError(f"Binance {path} answered {resp.status_code}")
                    wait = self.backoff_s * 2**attempt
                else:
                    raise PeerRejectedError(
                        f"Binance rejected {path} (HTTP {resp.status_code}): {_binance_msg(resp)}"
                    )
            if attempt >= self.max_retries:
                raise error
            log.warning("%s; retry %d/%d in %.1f s", error, attempt + 1, self.max_retries, wait)
            self.sleep(wait)
            attempt += 1

    def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def ping(self, timeout_s: float = 3.0) -> bool:
        """True when ``/api/v3/ping`` answers within ``timeout_s`` (no retries)."""
        try:
            resp = requests.get(f"{self.base_url}/api/v3/ping", timeout=timeout_s)
            return resp.status_code == 200
        except requests.RequestException:
            return False

    # ------------------------------------------------------------ klines
    def fetch_klines(
        self, symbol: str, interval: str, start: datetime, end: datetime
    ) -> KlinesResult:
        """Fetch every closed bar of ``symbol`` opening in [start, end), 1,000 bars a request.

        Returns:
            :class:`KlinesResult`.

        Raises:
            InvalidInputError: interval not one of 5m, 15m, 1h, 4h, 1d.
            RateLimitedError, ServiceUnavailableError, PeerRejectedError: see :meth:`_get`.
        """
        step = bar_length(interval)
        step_ms = int(step.total_seconds() * 1000)
        now_ms = _ms(self.now())
        end_ms = min(_ms(end), now_ms) - 1
        cursor = _ms(start)
        rows: list[tuple[int, float, float, float, float, float, float, int]] = []
        examples: list[RejectedRow] = []
        rejected = 0
        before = self.requests_made
        while cursor <= end_ms:
            page = self._get(
                "/api/v3/klines",
                {
                    "symbol": symbol,
                    "interval": interval,
                    "startTime": cursor,
                    "endTime": end_ms,
                    "limit": PAGE_LIMIT,
                },
            )
            if not isinstance(page, list):
                raise ServiceUnavailableError("Binance klines answered something other than a list")
            last_open = None
            for raw in page:
                parsed = _parse_kline(raw)
                if parsed is None:
                    rejected += 1
                    if len(examples) < 5:
                        examples.append(
                            RejectedRow(reason="malformed_row", values={"raw": repr(raw)[:200]})
                        )
                    continue
                last_open = max(last_open or parsed[0], parsed[0])
                if parsed[0] + step_ms <= now_ms:  # closed bars only
                    rows.append(parsed)
            if len(page) < PAGE_LIMIT:
                break
            if last_open is None:  # a full page without one valid row: cannot advance
                raise ServiceUnavailableError("Binance klines page held no valid row")
            cursor = last_open + step_ms
        frame = _rows_to_frame(rows)
        if rejected:
            log.warning("Binance %s %s: %d malformed rows rejected", symbol, interval, rejected)
        return KlinesResult(frame, rejected, examples, self.requests_made - before)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _binance_msg(resp: requests.Response) -> str:
    try:
        body = resp.json()
        return str(body.get("msg", body))[:200]
    except ValueError:
        return resp.text[:200]


def _parse_kline(raw: Any) -> tuple[int, float, float, float, float, float, float, int] | None:
    """One kline row -> (open_ms, o, h, l, c, v, quote_v, trades); None when malformed."""
    if not isinstance(raw, list | tuple) or len(raw) < 9:
        return None
    try:
        open_ms = int(raw[0])
        o, h, lo, c, v = (float(x) for x in raw[1:6])
        quote = float(raw[7])
        trades = int(raw[8])
    except (TypeError, ValueError):
        return None
    return open_ms, o, h, lo, c, v, quote, trades


def _rows_to_frame(
    rows: list[tuple[int, float, float, float, float, float, float, int]],
) -> pd.DataFrame:
    cols = ["open", "high", "low", "close", "volume", "quote_volume", "trades_count"]
    if not rows:
        return pd.DataFrame(
            columns=cols, index=pd.DatetimeIndex([], tz=UTC, name="open_time"), dtype=float
        )
    arr = np.array(rows, dtype=object)
    index = pd.DatetimeIndex(pd.to_datetime(arr[:, 0].astype(np.int64), unit="ms", utc=True))
    frame = pd.DataFrame(arr[:, 1:].astype(float), columns=cols, index=index)
    frame["trades_count"] = frame["trades_count"].astype(np.int64)
    frame.index.name = "open_time"
    return frame
