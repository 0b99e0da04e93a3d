"""Dead letters: runs that exhausted their recovery attempts (never expire).

Document (the recovery service owns its content)::

    {task_id, flow_name, deployment, parameters, attempts: [{run_count, state, message, at}],
     reason, created_at, requeued_at?, requeued_by?}

unique on ``task_id``. Whole documents only (nx-27017 stores ``$set`` datetimes as text).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.errors import DuplicateKeyError

from integrations.store.base import Repository
from integrations.store.schema import C


class DeadLetters(Repository):
    """The ``dead_letters`` collection."""

    def dead_letter_save(self, doc: Mapping[str, Any]) -> None:
        """Write the whole dead letter of ``doc["task_id"]`` (insert or replace).

        Raises:
            ValueError: no ``task_id``.
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        if not doc.get("task_id"):
            raise ValueError("a dead letter needs a task_id")
        self.upsert(C.DEAD_LETTERS, {"task_id": doc["task_id"]}, doc, "saving a dead letter")

    def dead_letter_add(self, doc: Mapping[str, Any]) -> bool:
        """Dead-letter ``doc["task_id"]`` once: insert it, or replace a letter that was
        re-queued; a letter already awaiting re-queue is kept (two recovery replicas, or a
        pass repeated after a timeout, write one letter and alert once).

        Returns:
            True when this call wrote the letter, False when one was already waiting.

        Raises:
            ValueError: no ``task_id``.
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        if not doc.get("task_id"):
            raise ValueError("a dead letter needs a task_id")
        col = self.col(C.DEAD_LETTERS)

        def add() -> bool:
            try:
                col.insert_one(dict(doc))
                return True
            except DuplicateKeyError:
                done = col.replace_one(
                    {"task_id": doc["task_id"], "requeued_at": {"$ne": None}}, dict(doc)
                )
                return done.matched_count > 0

        return self.call("adding a dead letter", add)

    def dead_letter_get(self, task_id: str) -> dict[str, Any] | None:
        """The dead letter of ``task_id`` (without ``_id``), or None."""
        return self.find_one(C.DEAD_LETTERS, {"task_id": task_id}, "reading a dead letter")

    def dead_letters_list(
        self, *, include_requeued: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Dead letters, newest first (without the re-queued ones unless asked)."""
        query: dict[str, Any] = {} if include_requeued else {"requeued_at": None}
        return self.find(
            C.DEAD_LETTERS,
            query,
            "listing dead letters",
            sort=[("created_at", DESCENDING)],
            limit=limit,
        )

    def dead_letter_mark_requeued(
        self, task_id: str, by: str, at: datetime | None = None
    ) -> dict[str, Any] | None:
        """Record that ``by`` re-queued the dead letter of ``task_id``.

        Returns:
            the updated document, or None when there is no such dead letter.
        """
        doc = self.dead_letter_get(task_id)
        if doc is None:
            return None
        doc.update(requeued_at=at or datetime.now(UTC), requeued_by=by)
        self.upsert(C.DEAD_LETTERS, {"task_id": task_id}, doc, "re-queueing a dead letter")
        return doc
