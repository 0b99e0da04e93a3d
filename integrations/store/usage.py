"""API usage: the gateway's per-user daily quotas and the runs each user started.

Two collections:

* ``api_quota``: one counter per (user, job, UTC day), unique on that key:
  ``{user, job, day, used, limit_seen, expires_at}``. A slot is taken by one conditional
  ``find_one_and_update({..., used: {$lt: limit}}, {$inc: {used: 1}})``: the check and the
  increment are one atomic operation, so concurrent requests can never exceed the limit.
* ``api_usage``: one document per reservation / run started through the gateway:
  ``{_id, user, job, day, created_at, task_id, idempotency_key, params_sha256, expires_at}``.

Taking a slot is not retried inside the store (a lost answer would count twice); the gateway
answers 503 and the client retries the request.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from integrations.store.base import Repository
from integrations.store.schema import C


def utc_day(now: datetime) -> str:
    """``YYYY-MM-DD`` of ``now`` in UTC."""
    return now.astimezone(UTC).strftime("%Y-%m-%d")


class ApiUsage(Repository):
    """``api_quota`` counters and ``api_usage`` records."""

    def _counter(self, user: str, job: str, day: str, now: datetime) -> None:
        """Create the counter of (user, job, day) if missing, starting from the runs already
        recorded that day (so a database written before the counters existed stays right).

        Indexed reads only (an existence ``find_one``, the day's runs by the ``user_day``
        index): a count scans the whole collection on nx-27017."""
        key = {"user": user, "job": job, "day": day}
        col = self.col(C.API_QUOTA)

        def op() -> None:
            if col.find_one(key, {"_id": 1}) is not None:
                return
            used = self._recorded(key)
            with suppress(DuplicateKeyError):  # a concurrent request created it first
                col.insert_one(self.stamped(C.API_QUOTA, {**key, "used": used, "created_at": now}))

        self.call("preparing a quota counter", op)

    def _recorded(self, key: dict[str, Any]) -> int:
        """``api_usage`` documents of (user, job, day): read by the ``user_day`` index."""
        day = {"user": key["user"], "day": key["day"]}
        docs = self.col(C.API_USAGE).find(day, {"_id": 0, "job": 1})
        return sum(1 for d in docs if d.get("job") == key["job"])

    def take_slot(self, user: str, job: str, limit: int, now: datetime) -> bool:
        """Take one of ``user``'s ``limit`` slots of ``job`` on ``now``'s UTC day.

        Returns:
            True when a slot was taken; False when all ``limit`` are used.

        Raises:
            StoreUnavailableError: MongoDB unreachable (not retried: see the module notes).
        """
        return self.take_slot_counted(user, job, limit, now) is not None

    def take_slot_counted(self, user: str, job: str, limit: int, now: datetime) -> int | None:
        """:meth:`take_slot`, returning the slots used after it (None: all ``limit`` used).

        One conditional ``find_one_and_update`` when the day's counter exists (every request
        but the day's first); the counter is created only when that finds nothing.

        Raises:
            StoreUnavailableError: MongoDB unreachable (not retried: see the module notes).
        """
        day = utc_day(now)

        def take() -> dict[str, Any] | None:
            return self.call(
                "taking a quota slot",
                lambda: self.col(C.API_QUOTA).find_one_and_update(
                    {"user": user, "job": job, "day": day, "used": {"$lt": int(limit)}},
                    {"$inc": {"used": 1}},
                    projection={"_id": 0, "used": 1},
                    return_document=ReturnDocument.AFTER,
                ),
                idempotent=False,
            )

        taken = take()
        if taken is None:  # all used, or no counter yet today
            self._counter(user, job, day, now)
            taken = take()
        return None if taken is None else int(taken["used"])

    def give_slot(self, user: str, job: str, day: str) -> None:
        """Give back one slot of (user, job, day) (never below zero)."""
        self.call(
            "giving back a quota slot",
            lambda: self.col(C.API_QUOTA).update_one(
                {"user": user, "job": job, "day": day, "used": {"$gt": 0}},
                {"$inc": {"used": -1}},
            ),
            idempotent=False,
        )

    def used(self, user: str, job: str, now: datetime) -> int:
        """Slots of ``job`` that ``user`` used on ``now``'s UTC day."""
        key = {"user": user, "job": job, "day": utc_day(now)}
        doc = self.call(
            "reading a quota", lambda: self.col(C.API_QUOTA).find_one(key, {"_id": 0, "used": 1})
        )
        if doc is not None:
            return int(doc["used"])
        return self.call("reading a quota", lambda: self._recorded(key))

    def record(self, doc: dict[str, Any]) -> Any:
        """Insert one ``api_usage`` document (exactly once). Returns its ``_id``."""
        return self.insert(C.API_USAGE, doc, "recording API usage")

    def get(self, reservation: Any) -> dict[str, Any] | None:
        """The ``api_usage`` document ``reservation`` (with ``_id``), or None."""
        return self.call(
            "reading API usage", lambda: self.col(C.API_USAGE).find_one({"_id": reservation})
        )

    def remove(self, reservation: Any) -> dict[str, Any] | None:
        """Delete the ``api_usage`` document ``reservation``. Returns it, or None if absent."""
        return self.call(
            "releasing API usage",
            lambda: self.col(C.API_USAGE).find_one_and_delete({"_id": reservation}),
        )

    def set_task(self, reservation: Any, task_id: str) -> None:
        """Record the run created for ``reservation`` (a ``$set`` of a string: safe on nx)."""
        self.call(
            "recording a run",
            lambda: self.col(C.API_USAGE).update_one(
                {"_id": reservation}, {"$set": {"task_id": task_id}}
            ),
        )

    def count_task(self, task_id: str) -> int:
        """How many ``api_usage`` documents hold ``task_id`` (indexed read, no count)."""
        return self.call(
            "reading API usage",
            lambda: len(list(self.col(C.API_USAGE).find({"task_id": task_id}, {"_id": 1}))),
        )

    def holds_task(self, task_id: str) -> bool:
        """True when an ``api_usage`` document holds ``task_id`` (one indexed ``find_one``)."""
        return (
            self.call(
                "reading API usage",
                lambda: self.col(C.API_USAGE).find_one({"task_id": task_id}, {"_id": 1}),
            )
            is not None
        )

    def find_by_key(self, user: str, job: str, idempotency_key: str) -> dict[str, Any] | None:
        """The ``api_usage`` document of ``user``'s earlier ``job`` request with this key."""
        return self.find_one(
            C.API_USAGE,
            {"user": user, "job": job, "idempotency_key": idempotency_key},
            "reading API usage",
        )

    def reservation_by_key(
        self, user: str, job: str, idempotency_key: str
    ) -> dict[str, Any] | None:
        """:meth:`find_by_key` with the document's ``_id`` (the reservation to release)."""
        return self.call(
            "reading API usage",
            lambda: self.col(C.API_USAGE).find_one(
                {"user": user, "job": job, "idempotency_key": idempotency_key}
            ),
        )

    def owner_of(self, task_id: str) -> dict[str, Any] | None:
        """The ``api_usage`` document of a run started through the gateway, or None."""
        return self.find_one(C.API_USAGE, {"task_id": task_id}, "reading API usage")

    def tasks_of(self, user: str, limit: int = 50) -> list[dict[str, Any]]:
        """``user``'s newest runs started through the gateway (newest first)."""
        docs = self.find(
            C.API_USAGE, {"user": user, "task_id": {"$ne": None}}, "listing a user's runs"
        )
        return sorted(docs, key=lambda d: d["created_at"], reverse=True)[:limit]
