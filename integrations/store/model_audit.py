"""The audit trail of the model registry: ``model_audit``, one document per status change
an operator made (promote, rollback, archive), kept forever.

A document: ``{audit_id, operation_id, at, by, action, reason, model_id, version,
model_type, symbol, timeframe, from_status, to_status}``. One operation may change two
models (a promote deploys one and retires the one it replaces): both entries share its
``operation_id``. Entries are inserted with a fixed ``audit_id`` (unique), so a retried
write never records a change twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pymongo import DESCENDING

from integrations.store.base import Repository
from integrations.store.boundary import DuplicateKeyStoreError
from integrations.store.schema import C

#: Fields an audit query may filter on.
AUDIT_FILTERS = ("model_type", "symbol", "timeframe", "model_id", "action", "by")


class ModelAudit(Repository):
    """Who changed which model's status, when, why, from what to what."""

    def audit_record(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Insert the entries of one operation (each with its ``audit_id``).

        An entry whose ``audit_id`` is already stored (an earlier attempt wrote it) is kept
        as it is.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
            StoreError: any other refusal.
        """
        for entry in entries:
            try:
                self.insert(C.MODEL_AUDIT, entry, "recording a model audit entry")
            except DuplicateKeyStoreError:
                if self.find_one(C.MODEL_AUDIT, {"audit_id": entry["audit_id"]}, "reading audit"):
                    continue
                raise

    def audit_entries(self, query: Mapping[str, Any], *, limit: int = 100) -> list[dict[str, Any]]:
        """Entries matching ``query`` (fields of :data:`AUDIT_FILTERS`), newest first.

        Raises:
            ValueError: ``query`` names a field that is not in :data:`AUDIT_FILTERS`.
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        unknown = sorted(set(query) - set(AUDIT_FILTERS))
        if unknown:
            raise ValueError(f"model audit filters: {unknown} not in {list(AUDIT_FILTERS)}")
        return self.find(
            C.MODEL_AUDIT,
            dict(query),
            "reading the model audit",
            sort=[("at", DESCENDING), ("audit_id", DESCENDING)],
            limit=limit,
        )
