"""Per-user daily quotas: an atomic counter per (user, job, UTC day) in the store
(``api_quota``) and one ``api_usage`` document per run (see :mod:`integrations.store.usage`).

A slot is reserved before the run is created and released if creating it fails, so a
refused or failed request never uses quota and an accepted one always does. Days are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from core.exceptions import OperationalError
from integrations.store import Store
from integrations.store.usage import utc_day


class QuotaExceededError(OperationalError):
    """The user reached the job's daily limit (HTTP 429).

    Attributes:
        retry_after_s: seconds until the quota resets (next UTC midnight).
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def seconds_to_reset(now: datetime) -> int:
    """Whole seconds from ``now`` to the next UTC midnight (at least 1)."""
    now = now.astimezone(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()))


def used_today(store: Store, user: str, job: str, now: datetime) -> int:
    """Runs of ``job`` that ``user`` started (or is starting) on ``now``'s UTC day."""
    return store.api_usage.used(user, job, now)


class Reservation(NamedTuple):
    """One slot taken: the ``api_usage`` document's ``_id`` and the day's slots used with it."""

    id: Any
    used: int


def reserve(
    store: Store,
    user: str,
    job: str,
    limit: int,
    noun: str,
    now: datetime,
    idempotency_key: str | None = None,
    params_sha256: str | None = None,
) -> Any:
    """Take one of ``user``'s ``limit`` daily slots for ``job``.

    The slot is taken by one atomic conditional increment of the day's counter (no
    check-then-act), so concurrent requests never exceed ``limit``.

    Returns:
        the reservation's ``_id`` (pass it to :func:`confirm` or :func:`release`).

    Raises:
        QuotaExceededError: "Max {limit} {noun} per day exceeded" (nothing is kept).
        StoreUnavailableError: the store did not answer (nothing is kept).
    """
    return reserve_slot(store, user, job, limit, noun, now, idempotency_key, params_sha256).id


def reserve_slot(
    store: Store,
    user: str,
    job: str,
    limit: int,
    noun: str,
    now: datetime,
    idempotency_key: str | None = None,
    params_sha256: str | None = None,
) -> Reservation:
    """:func:`reserve`, also returning the slots used today with this one (two store
    round trips: the counter's increment and the ``api_usage`` record).

    Raises:
        QuotaExceededError, StoreUnavailableError: see :func:`reserve`.
    """
    used = store.api_usage.take_slot_counted(user, job, limit, now)
    if used is None:
        raise QuotaExceededError(
            f"Max {limit} {noun} per day exceeded (resets at 00:00 UTC)", seconds_to_reset(now)
        )
    doc = {
        "user": user,
        "job": job,
        "day": utc_day(now),
        "created_at": now,
        "task_id": None,
        "idempotency_key": idempotency_key,
        "params_sha256": params_sha256,
    }
    try:
        return Reservation(store.api_usage.record(doc), used)
    except BaseException:
        store.api_usage.give_slot(user, job, doc["day"])
        raise


def confirm(store: Store, reservation: Any, task_id: str, *, shared: bool = True) -> bool:
    """Record the run created for ``reservation`` (its owner is then the reserving user).

    Args:
        shared: the run may already be another reservation's (it was created with an
            idempotency key, which returns the existing run); False for a run created
            without one (always new): then nothing is read first.

    Returns:
        False, with the reservation released, when another reservation already holds this
        run (two requests with one idempotency key: the run is counted once).
    """
    if shared and store.api_usage.holds_task(task_id):
        release(store, reservation)
        return False
    store.api_usage.set_task(reservation, task_id)
    return True


def find_by_key(store: Store, user: str, job: str, idempotency_key: str) -> dict[str, Any] | None:
    """The ``api_usage`` document of ``user``'s earlier ``job`` request with this key, or None."""
    return store.api_usage.find_by_key(user, job, idempotency_key)


def reservation_by_key(
    store: Store, user: str, job: str, idempotency_key: str
) -> dict[str, Any] | None:
    """:func:`find_by_key` with the document's ``_id`` (to :func:`release` it), or None."""
    return store.api_usage.reservation_by_key(user, job, idempotency_key)


def release(store: Store, reservation: Any) -> None:
    """Give back a slot whose run could not be created (once, however often it is called)."""
    doc = store.api_usage.remove(reservation)
    if doc is not None:
        store.api_usage.give_slot(doc["user"], doc["job"], doc["day"])


def owner_of(store: Store, task_id: str) -> dict[str, Any] | None:
    """The ``api_usage`` document of a run started through the gateway, or None."""
    return store.api_usage.owner_of(task_id)


def tasks_of(store: Store, user: str, limit: int = 50) -> list[dict[str, Any]]:
    """``user``'s newest runs started through the gateway (newest first)."""
    return store.api_usage.tasks_of(user, limit)
