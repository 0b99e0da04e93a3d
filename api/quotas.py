"""Per-user daily quotas, counted in the ``api_usage`` collection (one document per run).

A slot is reserved before the run is created and released if creating it fails, so a
refused or failed request never uses quota and an accepted one always does. Days are UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from core.exceptions import OperationalError
from integrations.store import C, Store


class QuotaExceededError(OperationalError):
    """The user reached the job's daily limit (HTTP 429).

    Attributes:
        retry_after_s: seconds until the quota resets (next UTC midnight).
    """

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def utc_day(now: datetime) -> str:
    """``YYYY-MM-DD`` of ``now`` in UTC."""
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def seconds_to_reset(now: datetime) -> int:
    """Whole seconds from ``now`` to the next UTC midnight (at least 1)."""
    now = now.astimezone(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, int((midnight - now).total_seconds()))


def used_today(store: Store, user: str, job: str, now: datetime) -> int:
    """Runs of ``job`` that ``user`` started (or is starting) on ``now``'s UTC day."""
    return store.col(C.API_USAGE).count_documents({"user": user, "job": job, "day": utc_day(now)})


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

    Returns:
        the reservation's ``_id`` (pass it to :func:`confirm` or :func:`release`).

    Raises:
        QuotaExceededError: "Max {limit} {noun} per day exceeded" (nothing is kept).
    """
    col = store.col(C.API_USAGE)
    doc = {
        "user": user,
        "job": job,
        "day": utc_day(now),
        "created_at": now,
        "task_id": None,
        "idempotency_key": idempotency_key,
        "params_sha256": params_sha256,
    }
    reservation = col.insert_one(doc).inserted_id
    if used_today(store, user, job, now) > limit:
        col.delete_one({"_id": reservation})
        raise QuotaExceededError(
            f"Max {limit} {noun} per day exceeded (resets at 00:00 UTC)", seconds_to_reset(now)
        )
    return reservation


def confirm(store: Store, reservation: Any, task_id: str) -> bool:
    """Record the run created for ``reservation`` (its owner is then the reserving user).

    Returns:
        False, with the reservation released, when another reservation already holds this
        run (two requests with one idempotency key: the run is counted once).
    """
    col = store.col(C.API_USAGE)
    if col.count_documents({"task_id": task_id}) > 0:
        col.delete_one({"_id": reservation})
        return False
    col.update_one({"_id": reservation}, {"$set": {"task_id": task_id}})
    return True


def find_by_key(store: Store, user: str, job: str, idempotency_key: str) -> dict[str, Any] | None:
    """The ``api_usage`` document of ``user``'s earlier ``job`` request with this key, or None."""
    return store.col(C.API_USAGE).find_one(
        {"user": user, "job": job, "idempotency_key": idempotency_key}, {"_id": 0}
    )


def release(store: Store, reservation: Any) -> None:
    """Give back a slot whose run could not be created."""
    store.col(C.API_USAGE).delete_one({"_id": reservation})


def owner_of(store: Store, task_id: str) -> dict[str, Any] | None:
    """The ``api_usage`` document of a run started through the gateway, or None."""
    return store.col(C.API_USAGE).find_one({"task_id": task_id}, {"_id": 0})


def tasks_of(store: Store, user: str, limit: int = 50) -> list[dict[str, Any]]:
    """``user``'s newest runs started through the gateway (newest first)."""
    cur = store.col(C.API_USAGE).find({"user": user, "task_id": {"$ne": None}}, {"_id": 0})
    return sorted(cur, key=lambda d: d["created_at"], reverse=True)[:limit]
