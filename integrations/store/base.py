"""What every repository shares: its database, the error boundary and the retention rules.

Writes follow the nx-27017 notes in docs/architecture.md: whole documents only
(``insert_one`` / ``replace_one``), never ``$set`` of datetimes or ``$setOnInsert``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from bson import ObjectId
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import DuplicateKeyError

from integrations.store.boundary import Boundary
from integrations.store.schema import Retention

T = TypeVar("T")


def written_at(doc: Mapping[str, Any]) -> datetime:
    """When ``doc`` was written, for its expiry: its datetime ``created_at``, else its
    ``saved_at`` (task results), else now (UTC)."""
    for field in ("created_at", "saved_at"):
        value = doc.get(field)
        if isinstance(value, datetime):
            return value
    return datetime.now(UTC)


class Repository:
    """Base of the per-domain repositories.

    Args:
        db: the platform database.
        boundary: converts pymongo errors and retries temporary ones.
        retention: when documents of expiring collections expire.
    """

    def __init__(self, db: Database, boundary: Boundary, retention: Retention) -> None:
        self.db = db
        self.boundary = boundary
        self.retention = retention

    def col(self, name: str) -> Collection:
        """Return collection ``name`` (one of :class:`~integrations.store.schema.C`)."""
        return self.db[name]

    def call(self, what: str, op: Callable[[], T], *, idempotent: bool = True) -> T:
        """Run ``op`` inside the error boundary (see :meth:`Boundary.call`)."""
        return self.boundary.call(what, op, idempotent=idempotent)

    def stamped(self, name: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of ``doc`` with ``expires_at`` set when ``name`` expires and it has none.

        The expiry counts from the document's datetime ``created_at`` (``saved_at`` for a task
        result), else from now.
        """
        body = dict(doc)
        if "expires_at" not in body:
            written = written_at(body)
            expires = self.retention.expires_at(name, written)
            if expires is not None:
                body["expires_at"] = expires
        return body

    def stamp_missing_expiry(self, name: str) -> int:
        """Give every document of the expiring collection ``name`` that has no ``expires_at``
        one (:meth:`stamped`), each document replaced whole (nx-27017 stores a ``$set``
        datetime as a string). Documents written before their collection expired get a date.

        Returns:
            how many documents were stamped (0 for a collection kept forever).

        Raises:
            StoreUnavailableError, StoreError: see :meth:`Boundary.call`.
        """
        if self.retention.expires_at(name, datetime.now(UTC)) is None:
            return 0
        col = self.col(name)

        def op() -> int:
            docs = list(col.find({"expires_at": {"$exists": False}}))
            for doc in docs:
                col.replace_one({"_id": doc["_id"]}, self.stamped(name, doc))
            return len(docs)

        return self.call(f"stamping expiry dates in {name}", op)

    def insert(self, name: str, doc: Mapping[str, Any], what: str) -> Any:
        """Insert ``doc`` into ``name`` exactly once, retries included.

        The ``_id`` is fixed before the first attempt, so an attempt whose answer was lost
        and whose retry then meets a duplicate ``_id`` counts as done.

        Returns:
            the document's ``_id``.

        Raises:
            StoreUnavailableError, DuplicateKeyStoreError, StoreError: see :meth:`Boundary.call`.
        """
        body = self.stamped(name, doc)
        body.setdefault("_id", ObjectId())
        col = self.col(name)
        attempts = 0

        def op() -> Any:
            nonlocal attempts
            attempts += 1
            try:
                col.insert_one(body)
            except DuplicateKeyError:
                if attempts > 1 and col.count_documents({"_id": body["_id"]}, limit=1):
                    return body["_id"]  # an earlier attempt wrote it
                raise
            return body["_id"]

        return self.call(what, op)

    def upsert(
        self,
        name: str,
        key: Mapping[str, Any],
        doc: Mapping[str, Any],
        what: str,
        *,
        retry: bool = True,
    ) -> None:
        """Write the whole document of ``key`` (insert or replace): safe to repeat.

        Args:
            retry: False makes one attempt whatever the retry budget (a caller that must
                not wait out an outage).

        Raises:
            StoreUnavailableError, StoreError: see :meth:`Boundary.call`.
        """
        body = self.stamped(name, doc)
        body.pop("_id", None)
        col = self.col(name)
        flt = dict(key)

        def op() -> None:
            try:
                col.replace_one(flt, body, upsert=True)
            except DuplicateKeyError:  # a concurrent upsert inserted the key first
                col.replace_one(flt, body)

        self.call(what, op, idempotent=retry)

    def find(
        self,
        name: str,
        query: Mapping[str, Any] | None,
        what: str,
        *,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """Documents of ``name`` matching ``query`` (without ``_id``).

        Raises:
            StoreUnavailableError, StoreError: see :meth:`Boundary.call`.
        """

        def op() -> list[dict[str, Any]]:
            cursor = self.col(name).find(dict(query or {}), {"_id": 0})
            if sort:
                cursor = cursor.sort(sort)
            if limit:
                cursor = cursor.limit(limit)
            return list(cursor)

        return self.call(what, op)

    def find_one(self, name: str, query: Mapping[str, Any], what: str) -> dict[str, Any] | None:
        """The first document of ``name`` matching ``query`` (without ``_id``), or None."""
        return self.call(what, lambda: self.col(name).find_one(dict(query), {"_id": 0}))
