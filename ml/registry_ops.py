"""Registry operations for operators: promote, roll back, archive (reading: ``ml.registry_views``).

Pure functions of the store (no model file is read, so no model-store key is needed). The
deployed pointer (``deployed_models``) is the truth and is switched first, in one atomic
write; the ``status`` fields follow; then every status change is written to the audit trail
(``model_audit``: who, when, what, why, from and to which status). A request repeated
after it succeeded changes nothing and writes no second entry.

Statuses (``ml.records.STATUSES``) and the transitions an operator may ask for:

* candidate -> deployed (promote); -> archived (archive).
* deployed -> retired when another version is promoted or the key is rolled back; it is
  never archived while deployed (409: promote another version or roll back first).
* retired -> deployed (promote, or rollback when it is the version the current one replaced);
  -> archived.
* archived: final (kept for the record); promoting it answers 409.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime

from core.exceptions import ConflictError
from core.schemas.registry import AuditEntry, ModelKey, RegistryAction, RegistryChange
from integrations.store import Store
from integrations.store.models import model_key
from ml.records import ModelRecord
from ml.registry_views import (
    LiveSource,
    compare,
    describe_all,
    key_text,
    label,
    list_hint,
    list_versions,
    resolve,
)

__all__ = [
    "LiveSource",
    "archive",
    "audit_trail",
    "compare",
    "list_versions",
    "promote",
    "resolve",
    "rollback",
]


# ------------------------------------------------------------------ status changes
def _set_status(store: Store, record: ModelRecord, status: str, by: str, now: datetime) -> None:
    record.status = status
    if status == "deployed":
        record.deployed_at, record.deployed_by = now, by
    elif status == "retired":
        record.retired_at, record.retired_by = now, by
    elif status == "archived":
        record.archived_at, record.archived_by = now, by
    store.model_replace(record.to_doc())


def _apply(
    store: Store,
    action: RegistryAction,
    changes: Iterable[tuple[ModelRecord, str]],
    *,
    by: str,
    reason: str,
) -> list[AuditEntry]:
    """Set each record's new status, then record one audit entry per change."""
    now = datetime.now(UTC)
    operation = uuid.uuid4().hex
    entries = []
    for record, to_status in changes:
        from_status = record.status
        _set_status(store, record, to_status, by, now)
        entries.append(
            AuditEntry(
                audit_id=uuid.uuid4().hex,
                operation_id=operation,
                at=now,
                by=by,
                action=action,
                reason=reason,
                model_id=record.model_id,
                version=label(record),
                model_type=record.model_type,
                symbol=record.symbol,
                timeframe=record.timeframe,
                from_status=from_status,
                to_status=to_status,
            )
        )
    store.model_audit.audit_record([e.model_dump() for e in entries])
    return entries


def _change(
    store: Store, action: RegistryAction, record: ModelRecord, audit: list[AuditEntry], text: str
) -> RegistryChange:
    (version,) = describe_all(store, [store.model_get(record.model_id) or record.to_doc()], None)
    return RegistryChange(
        action=action, version=version, changed=bool(audit), audit=audit, message=text
    )


def _switch(
    store: Store, action: RegistryAction, target: ModelRecord, by: str, reason: str
) -> list[AuditEntry]:
    """Point the target's key at it, then: target deployed, every other deployed version
    of the key retired; audited."""
    key = model_key(target.to_doc())
    store.models.deploy_pointer_set(target.to_doc(), by, datetime.now(UTC))
    others = [
        ModelRecord.from_doc(d)
        for d in store.models_find({**key, "status": "deployed"})
        if d["model_id"] != target.model_id
    ]
    return _apply(
        store,
        action,
        [(target, "deployed"), *((o, "retired") for o in others)],
        by=by,
        reason=reason,
    )


def promote(store: Store, version: str, *, by: str, reason: str) -> RegistryChange:
    """Deploy ``version`` (a candidate or a retired version); the version it replaces is
    retired and remembered as the one a rollback returns to.

    Raises:
        InvalidInputError, NotFoundError: see :func:`resolve`.
        ConflictError: the version is archived.
    """
    record = resolve(store, version)
    key = model_key(record.to_doc())
    name = label(record)
    if record.status == "archived":
        raise ConflictError(
            f"{name} is archived: an archived version is never deployed again. Promote "
            f"another version of {key_text(key)} (`{list_hint(key)}`) or train a new one"
        )
    pointer = store.models.deploy_pointers(key)
    current = pointer[0]["model_id"] if pointer else None
    if current == record.model_id and record.status == "deployed":
        return _change(store, "promote", record, [], f"{name} is already deployed: no change")
    if current is not None and current != record.model_id:
        record.replaced_model_id = current
    audit = _switch(store, "promote", record, by, reason)
    return _change(store, "promote", record, audit, f"{name} now serves {key_text(key)}")


def rollback(store: Store, key: ModelKey, *, by: str, reason: str) -> RegistryChange:
    """Deploy again the version the key's deployed version replaced; the current one is
    retired.

    Raises:
        ConflictError: nothing is deployed, the deployed version replaced none, or the one it
            replaced is archived (each message says what to do instead).
    """
    k = key.model_dump()
    pointer = store.models.deploy_pointers(k)
    if not pointer:
        raise ConflictError(
            f"No {key_text(k)} version is deployed: nothing to roll back. Promote one "
            f"(`{list_hint(k)}`, then `botai models promote VERSION --reason ...`)"
        )
    current = ModelRecord.from_doc(store.model_get(pointer[0]["model_id"]) or {})
    target_id = current.replaced_model_id  # None: the key's first, or deployed before
    target_doc = store.model_get(target_id) if target_id else None  # deploys recorded it
    if target_doc is None:
        raise ConflictError(
            f"{label(current)} replaced no earlier version of {key_text(k)}: nothing to roll "
            f"back to. Promote the version you want instead (`{list_hint(k)}`)"
        )
    target = ModelRecord.from_doc(target_doc)
    if target.status == "archived":
        raise ConflictError(
            f"{label(current)} replaced {label(target)}, which is archived and is never "
            f"deployed again: promote another version instead (`{list_hint(k)}`)"
        )
    audit = _switch(store, "rollback", target, by, reason)
    return _change(
        store,
        "rollback",
        target,
        audit,
        f"rolled {key_text(k)} back from {label(current)} to {label(target)}",
    )


def archive(store: Store, version: str, *, by: str, reason: str) -> RegistryChange:
    """Archive ``version`` (kept, never served, never deployed again).

    Raises:
        InvalidInputError, NotFoundError: see :func:`resolve`.
        ConflictError: the version is deployed (roll back or promote another first).
    """
    record = resolve(store, version)
    key = model_key(record.to_doc())
    name = label(record)
    pointer = store.models.deploy_pointers(key)
    if pointer and pointer[0]["model_id"] == record.model_id:
        raise ConflictError(
            f"{name} is the deployed version of {key_text(key)}: archiving it would leave "
            f"the key without a model. Roll back (`botai models rollback --symbol "
            f"{key['symbol']} --timeframe {key['timeframe']} --model-type {key['model_type']} "
            "--reason ...`) or promote another version first, then archive it"
        )
    if record.status == "archived":
        return _change(store, "archive", record, [], f"{name} is already archived: no change")
    if record.status == "deployed":  # the pointer moved on: the status field catches up
        record.status = "retired"
    audit = _apply(store, "archive", [(record, "archived")], by=by, reason=reason)
    return _change(store, "archive", record, audit, f"{name} archived")


def audit_trail(store: Store, *, limit: int = 100, **filters: str | None) -> list[AuditEntry]:
    """Audit entries matching ``filters`` (model_type, symbol, timeframe, model_id, action,
    by), newest first."""
    query = {k: v for k, v in filters.items() if v is not None}
    return [AuditEntry(**d) for d in store.model_audit.audit_entries(query, limit=limit)]
