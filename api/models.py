"""The model registry over HTTP (admins): list and compare versions, promote, roll back,
archive, read the audit trail. Every change is audited with the caller's user id and the
reason the body gives (``ml.registry_ops``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query

from api.deps import SettingsDep, StoreDep, no_unknown_query, require_admin
from api.outages import store_calls
from api.routes import answers
from api.security import Principal
from core.schemas.registry import (
    VERSION_EXAMPLE,
    VERSION_PATTERN,
    AuditList,
    ChangeRequest,
    RegistryChange,
    RollbackRequest,
    VersionComparison,
    VersionList,
)
from ml import registry_ops
from ml.registry_live import ledger_live_source

router = APIRouter(prefix="/api/models", tags=["models"], dependencies=[Depends(no_unknown_query)])

Admin = Annotated[Principal, Depends(require_admin)]
Symbol = Annotated[
    str | None,
    Query(pattern=r"^[A-Z0-9]{2,12}$", description="Trading pair, e.g. BTCUSDT."),
]
Timeframe = Annotated[
    str | None, Query(pattern=r"^[0-9]{1,3}[mhdwM]$", description="Timeframe, e.g. 1h.")
]
ModelTypeFilter = Annotated[
    Literal["lstm", "gru", "transformer"] | None, Query(description="lstm, gru or transformer.")
]
Limit = Annotated[int, Query(ge=1, le=1000, description="At most this many (1-1000).")]
VersionPath = Annotated[
    str,
    Path(
        pattern=VERSION_PATTERN,
        description=f"A version name ({VERSION_EXAMPLE}) or a 32-character model id.",
        examples=[VERSION_EXAMPLE],
    ),
]

S403 = "Admin privileges required."
S404 = "No such model version (the message says how to list them)."
S409 = (
    "The change is impossible in the version's state: promoting an archived version, "
    "archiving the deployed one, rolling back a key with nothing to go back to (the message "
    "says what to do instead)."
)
S422 = (
    "Invalid parameters (the message names each field and the fix), e.g. a missing reason, "
    "or a body that is not a JSON object."
)


@router.get("", responses=answers(401, 403, 422, 500, 503, s403=S403))
def list_models(
    _admin: Admin,
    store: StoreDep,
    settings: SettingsDep,
    symbol: Symbol = None,
    timeframe: Timeframe = None,
    model_type: ModelTypeFilter = None,
    limit: Limit = 200,
) -> VersionList:
    """Versions of the models (filtered by key fields), newest first, with their held-out
    figures and each key's deployed version (admin)."""
    with store_calls(settings):
        return registry_ops.list_versions(
            store,
            symbol=symbol,
            timeframe=timeframe,
            model_type=model_type,
            limit=limit,
            live_source=ledger_live_source(store),
        )


@router.get("/compare", responses=answers(401, 403, 404, 422, 500, 503, s403=S403, s404=S404))
def compare_models(
    _admin: Admin,
    store: StoreDep,
    settings: SettingsDep,
    a: Annotated[str, Query(pattern=VERSION_PATTERN, description="First version.")],
    b: Annotated[str, Query(pattern=VERSION_PATTERN, description="Second version.")],
) -> VersionComparison:
    """Two versions side by side: figures, statuses and the accuracy difference with its
    standard error (admin)."""
    with store_calls(settings):
        return registry_ops.compare(store, a, b, live_source=ledger_live_source(store))


@router.get("/audit", responses=answers(401, 403, 422, 500, 503, s403=S403))
def model_audit(
    _admin: Admin,
    store: StoreDep,
    settings: SettingsDep,
    symbol: Symbol = None,
    timeframe: Timeframe = None,
    model_type: ModelTypeFilter = None,
    limit: Limit = 100,
) -> AuditList:
    """Who promoted, rolled back or archived which version, when, why, from and to which
    status; newest first (admin)."""
    with store_calls(settings):
        entries = registry_ops.audit_trail(
            store, limit=limit, symbol=symbol, timeframe=timeframe, model_type=model_type
        )
    return AuditList(entries=entries, count=len(entries))


_CHANGE_ANSWERS = answers(
    401, 403, 404, 409, 422, 500, 503, s403=S403, s404=S404, s409=S409, s422=S422
)


@router.post(
    "/rollback", responses=answers(401, 403, 409, 422, 500, 503, s403=S403, s409=S409, s422=S422)
)
def rollback_model(
    body: RollbackRequest, admin: Admin, store: StoreDep, settings: SettingsDep
) -> RegistryChange:
    """Deploy again the version the key's deployed version replaced; the current one is
    retired (admin; audited)."""
    with store_calls(settings):
        return registry_ops.rollback(store, body.key, by=admin.user, reason=body.reason)


@router.post("/{version}/promote", responses=_CHANGE_ANSWERS)
def promote_model(
    version: VersionPath, body: ChangeRequest, admin: Admin, store: StoreDep, settings: SettingsDep
) -> RegistryChange:
    """Deploy a candidate (or a retired version) for its key; the version it replaces is
    retired (admin; audited). Promoting the deployed version again changes nothing."""
    with store_calls(settings):
        return registry_ops.promote(store, version, by=admin.user, reason=body.reason)


@router.post("/{version}/archive", responses=_CHANGE_ANSWERS)
def archive_model(
    version: VersionPath, body: ChangeRequest, admin: Admin, store: StoreDep, settings: SettingsDep
) -> RegistryChange:
    """Archive a version that is not deployed: kept for the record, never served or deployed
    again (admin; audited)."""
    with store_calls(settings):
        return registry_ops.archive(store, version, by=admin.user, reason=body.reason)
