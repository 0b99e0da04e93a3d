"""Bounded calls: every call the gateway makes to Prefect or the store has a timeout, and an
outage answers 503 with a message naming the service (TC-ASYNC-076, 078).

* Prefect: :func:`prefect_bounded` puts the gateway's request timeout
  (``BOTAI_API_PREFECT_TIMEOUT_S``) and no client retries into Prefect's settings context
  for the whole request, so every Prefect client the request opens (including the ones of
  shared helpers such as ``tasks.training.assert_no_active_training``) gives up in time
  instead of retrying for minutes (Prefect's defaults: 60 s per request, 5 retries, a
  hung server held a request 120 s). :func:`prefect_call` retries busy answers (5xx, 429;
  ``BOTAI_API_PREFECT_RETRIES``) but never a timeout.
* Store: :func:`store_calls` bounds each store section with ``pymongo.timeout`` (per
  operation deadline, server selection included). Its errors are converted once, by the
  store's error boundary (``integrations.store.boundary``): an unreachable, hung or
  restarting store is a :class:`~core.exceptions.StoreUnavailableError` (503), a refusal a
  :class:`~core.exceptions.StoreError` (500).
* :func:`unavailable_message` names the service of any outage error for the 503 answer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx
import pymongo
from prefect.exceptions import PrefectHTTPStatusError

from api.settings import ApiSettings
from core.exceptions import PrefectUnavailableError, ServiceUnavailableError, StoreUnavailableError

T = TypeVar("T")
log = logging.getLogger(__name__)

PREFECT = "Prefect API unavailable"
STORE = "MongoDB store unavailable"

_cache_lock = threading.Lock()
#: (id of the current Prefect settings, timeout, retries) -> (those settings, bounded copy).
#: Building a settings copy costs ~60 ms; entering a cached one ~0.3 ms.
_bounded: dict[tuple[int, float, int], tuple[Any, Any]] = {}


@contextmanager
def prefect_bounded(settings: ApiSettings) -> Iterator[None]:
    """Prefect's settings context with the gateway's request timeout and retries."""
    import prefect.context
    from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, PREFECT_CLIENT_MAX_RETRIES

    ctx = prefect.context.get_settings_context()
    key = (id(ctx.settings), settings.prefect_timeout_s, settings.prefect_retries)
    with _cache_lock:
        hit = _bounded.get(key)
        if hit is None or hit[0] is not ctx.settings:
            bounded = ctx.settings.copy_with_update(
                updates={
                    PREFECT_API_REQUEST_TIMEOUT: settings.prefect_timeout_s,
                    # retries of busy answers: prefect_call, never of timeouts
                    PREFECT_CLIENT_MAX_RETRIES: 0,
                }
            )
            if len(_bounded) > 64:  # settings contexts of finished tests or reloads
                _bounded.clear()
            hit = _bounded[key] = (ctx.settings, bounded)
    with prefect.context.SettingsContext(profile=ctx.profile, settings=hit[1]):
        yield


def prefect_call(fn: Callable[[], T], settings: ApiSettings | None = None) -> T:
    """Run ``fn`` (Prefect client calls), naming the Prefect API in any outage.

    An answer 5xx or 429 (a busy server: its SQLite database locked under load answers 503)
    is retried ``settings.prefect_retries`` times, 0.5 s then 1 s apart; no answer in time
    or no connection is not retried (the caller gets 503 at once and may retry).

    Returns:
        what ``fn`` returns.

    Raises:
        PrefectUnavailableError: no connection, no answer within the timeout, or a 5xx.
    """
    retries = settings.prefect_retries if settings is not None else 0
    for attempt in range(retries + 1):
        try:
            return fn()
        except httpx.TimeoutException as e:
            limit = f" within {settings.prefect_timeout_s:g} s" if settings else ""
            raise PrefectUnavailableError(
                f"{PREFECT}: no answer{limit} ({type(e).__name__}); retry in a few seconds"
            ) from e
        except httpx.TransportError as e:
            raise PrefectUnavailableError(
                f"{PREFECT}: {type(e).__name__}: {e}; retry in a few seconds"
            ) from e
        except PrefectHTTPStatusError as e:
            code = e.response.status_code
            if code < 500 and code != 429:
                raise
            if attempt < retries:
                log.info("Prefect API answered %d; retrying", code)
                time.sleep(0.5 * 2**attempt)
                continue
            raise PrefectUnavailableError(
                f"{PREFECT}: it answered {code}; retry in a few seconds"
            ) from e
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def store_calls(settings: ApiSettings) -> Iterator[None]:
    """Bound every store operation of the block by ``settings.store_timeout_s`` each.

    ``pymongo.timeout`` stays here although the gateway handles no pymongo error: it is a
    deadline the store's client obeys (server selection, connect and reply included), not an
    error conversion. An operation past it fails with a pymongo timeout error, which the
    store's boundary (every :class:`~integrations.store.Store` call runs through it) turns
    into :class:`~core.exceptions.StoreUnavailableError`.

    Raises:
        StoreUnavailableError: the store did not answer in time, refused the connection or
            dropped it (message starts with "MongoDB store unavailable").
        StoreError: the store refused an operation (see ``integrations.store.boundary``).
    """
    with pymongo.timeout(settings.store_timeout_s):
        yield


def unavailable_message(exc: BaseException) -> str | None:
    """The 503 message of an outage error, naming the service; None for other errors."""
    if isinstance(exc, StoreUnavailableError):
        text = str(exc)
        return text if text.startswith(STORE) else f"{STORE}: {text}"
    if isinstance(exc, PrefectUnavailableError):
        text = str(exc)
        return text if text.startswith(PREFECT) else f"{PREFECT}: {text}"
    if isinstance(exc, httpx.TransportError):
        return f"{PREFECT} ({type(exc).__name__}); retry in a few seconds"
    if isinstance(exc, ServiceUnavailableError):
        return str(exc)
    return None
