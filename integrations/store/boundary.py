"""The store's one error boundary: pymongo errors converted once, temporary ones retried.

* Temporary trouble (the server did not answer, dropped the connection, is electing a primary,
  an operation timed out) -> :class:`core.exceptions.StoreUnavailableError` (retryable).
* Permanent refusals (duplicate key, bad query, document too large, a closed client)
  -> :class:`core.exceptions.StoreError`; a duplicate key -> :class:`DuplicateKeyStoreError`.

Every repository runs its pymongo calls through :meth:`Boundary.call`, reads included. An
idempotent call that meets temporary trouble is retried with exponential backoff until the
boundary's retry budget (seconds) is spent, so a store restart shorter than the budget is
ridden out. Each retry is logged with the URI redacted.

Clients: :func:`connect` opens a new client (the caller closes it); :func:`shared_client`
returns one client per process per (URI, timeouts), closed at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC
from typing import TypeVar

from bson.errors import BSONError
from pymongo import MongoClient
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from core.exceptions import StoreError, StoreUnavailableError
from core.redact import redact_uri

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Server error codes that mean "try again": shutdown in progress, primary stepped down,
#: not writable primary, host unreachable, network timeout, socket exception, exceeded time limit.
TEMPORARY_CODES = frozenset({6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436})
FIRST_BACKOFF_S = 0.25
MAX_BACKOFF_S = 8.0
MESSAGE_CHARS = 300


class DuplicateKeyStoreError(StoreError):
    """A write collided with a unique key (a document with this key already exists)."""


def is_temporary(error: BaseException) -> bool:
    """True when ``error`` (a pymongo error) may succeed if the same call is made again."""
    if isinstance(error, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return True
    if isinstance(error, PyMongoError) and (
        error.has_error_label("RetryableWriteError")
        or error.has_error_label("TransientTransactionError")
        or error.timeout
    ):
        return True
    return isinstance(error, OperationFailure) and error.code in TEMPORARY_CODES


def convert(error: BaseException, what: str) -> StoreError | StoreUnavailableError:
    """The platform error for a pymongo/bson ``error`` met while doing ``what``."""
    name = type(error).__name__
    if is_temporary(error):
        return StoreUnavailableError(
            f"MongoDB store unavailable while {what} ({name}); it may be restarting, retry later"
        )
    detail = str(error)[:MESSAGE_CHARS]
    if isinstance(error, DuplicateKeyError):
        return DuplicateKeyStoreError(f"MongoDB refused {what}: duplicate key ({detail})")
    return StoreError(f"MongoDB refused {what} ({name}): {detail}")


class Boundary:
    """Runs pymongo calls, converting their errors and retrying temporary ones.

    Args:
        retry_s: retry budget of one call, seconds (0: never retry).
        uri_label: the store's URI with its password masked, for log lines.
        sleep: the wait between attempts (``time.sleep``).
    """

    def __init__(
        self, retry_s: float = 0.0, uri_label: str = "", sleep: Callable[[float], None] = time.sleep
    ) -> None:
        if retry_s < 0:
            raise ValueError("retry_s must be >= 0")
        self.retry_s = float(retry_s)
        self.uri_label = redact_uri(uri_label) if "://" in uri_label else uri_label
        self._sleep = sleep

    def call(self, what: str, op: Callable[[], T], *, idempotent: bool = True) -> T:
        """Return ``op()``; pymongo errors are converted, temporary ones retried.

        Args:
            what: what ``op`` does, for messages ("saving a backtest").
            idempotent: only an idempotent ``op`` is retried (a read, an upsert keyed by
                task id, an insert with a fixed ``_id``...).

        Returns:
            what ``op`` returned.

        Raises:
            StoreUnavailableError: temporary trouble that outlasted the retry budget.
            DuplicateKeyStoreError: a unique key collided.
            StoreError: any other refusal by the store.
        """
        deadline = time.monotonic() + self.retry_s
        delay = FIRST_BACKOFF_S
        attempt = 1
        while True:
            try:
                return op()
            except (PyMongoError, BSONError) as e:
                error = convert(e, what)
                left = deadline - time.monotonic()
                if not idempotent or not isinstance(error, StoreUnavailableError) or left <= 0:
                    raise error from e
                wait = min(delay, left)
                log.warning(
                    "MongoDB %s: %s while %s (attempt %d); retrying in %.2f s (%.0f s of the "
                    "retry budget left)",
                    self.uri_label or "store",
                    type(e).__name__,
                    what,
                    attempt,
                    wait,
                    left,
                )
                self._sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF_S)
                attempt += 1


def connect(
    uri: str, *, timeout_ms: int = 5000, socket_timeout_ms: int | None = None
) -> MongoClient:
    """Open a new pymongo client (lazy: no I/O happens until the first command).

    Args:
        timeout_ms: server selection and connect timeout.
        socket_timeout_ms: how long one operation may wait for its answer (default: 6x
            ``timeout_ms``, at least 30 s, as long candle writes need it).

    Returns:
        a client reading datetimes back as UTC-aware values; the caller closes it.
    """
    return MongoClient(
        uri,
        tz_aware=True,
        tzinfo=UTC,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        socketTimeoutMS=socket_timeout_ms or max(timeout_ms * 6, 30000),
    )


_clients: dict[tuple[str, int, int | None], MongoClient] = {}
_clients_lock = threading.Lock()


def shared_client(
    uri: str, *, timeout_ms: int = 5000, socket_timeout_ms: int | None = None
) -> MongoClient:
    """The process's client for ``uri`` and these timeouts (created on first use).

    pymongo clients are thread-safe and pool their connections, so one per process is right;
    all are closed at interpreter exit (:func:`close_shared_clients`). A client someone
    closed is replaced by a new one.
    """
    key = (uri, int(timeout_ms), socket_timeout_ms)
    with _clients_lock:
        client = _clients.get(key)
        if client is None or getattr(client, "_closed", False):
            client = connect(uri, timeout_ms=timeout_ms, socket_timeout_ms=socket_timeout_ms)
            _clients[key] = client
            log.debug("opened MongoDB client for %s", redact_uri(uri))
        return client


def is_shared(client: MongoClient) -> bool:
    """True when ``client`` came from :func:`shared_client` (and must not be closed by a Store)."""
    with _clients_lock:
        return any(c is client for c in _clients.values())


@atexit.register
def close_shared_clients() -> None:
    """Close every shared client (called at interpreter exit)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        try:
            client.close()
        except Exception:  # noqa: BLE001 - closing at exit must not raise
            log.debug("closing a MongoDB client failed", exc_info=True)
