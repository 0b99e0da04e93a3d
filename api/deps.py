"""Request dependencies: settings, store, the caller (401), admin (403), task ownership.

Handlers declare what they need with these ``Annotated`` types instead of repeating checks.
An ``HTTPException`` raised here ends the request before the body is validated or anything
is queued.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, HTTPException, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import quotas
from api.outages import store_calls
from api.security import AuthenticationError, Principal, decode_token
from api.settings import ApiSettings
from core.exceptions import InvalidInputError
from integrations.store import Store

_bearer = HTTPBearer(auto_error=False, description="JWT signed with BOTAI_API_JWT_SECRET")
_store_lock = threading.Lock()


def no_unknown_query(request: Request) -> None:
    """Refuse query parameters the route does not take: a misspelt one (``?priorty=high``)
    would otherwise be ignored without a word.

    Raises:
        InvalidInputError (422): naming the unknown parameters and the ones the route takes.
    """
    dependant = getattr(request.scope.get("route"), "dependant", None)
    known = _query_names(dependant) if dependant is not None else set()
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise InvalidInputError(
            f"Invalid parameters: unknown query parameter(s) {', '.join(map(repr, unknown))}; "
            f"this route takes: {takes}. Remove them"
        )


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route's handler and its dependencies take (FastAPI's
    ``Dependant`` tree)."""
    names = {field.alias for field in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def get_settings(request: Request) -> ApiSettings:
    """The app's :class:`ApiSettings`."""
    return request.app.state.settings


def get_store(request: Request) -> Store:
    """The platform store, connected on first use (``app.state.store_factory``).

    Raises:
        ConfigurationError, PrefectUnavailableError, StoreUnavailableError: see
        :func:`api.main.gateway_store` (nothing is cached; the next request tries again).
    """
    state = request.app.state
    with _store_lock:
        if state.store is None:
            state.store = state.store_factory()
        return state.store


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(get_store)]


def current_principal(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The verified caller.

    Raises:
        HTTPException: 401 without a bearer token or with an invalid/expired one.
    """
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        raise HTTPException(
            401, "Authentication required: send 'Authorization: Bearer <JWT>'", challenge
        )
    try:
        return decode_token(credentials.credentials, settings)
    except AuthenticationError as e:
        raise HTTPException(401, f"Authentication failed: {e}", challenge) from None


CurrentUser = Annotated[Principal, Depends(current_principal)]


def require_admin(user: CurrentUser) -> Principal:
    """The caller, when an admin.

    Raises:
        HTTPException: 403 "Admin privileges required".
    """
    if not user.is_admin:
        raise HTTPException(403, "Admin privileges required")
    return user


def visible_task(
    task_id: Annotated[UUID, Path(description="The flow run id returned on creation.")],
    user: CurrentUser,
    store: StoreDep,
    settings: SettingsDep,
) -> tuple[str, dict | None]:
    """A task the caller may see: their own, or any run for an admin.

    Returns:
        (task id, its ``api_usage`` document or None for runs not started by the gateway).

    Raises:
        HTTPException: 404 for a regular user and a run they did not start through the
            gateway; 403 for another user's task.
        StoreUnavailableError: the store did not answer in time.
    """
    with store_calls(settings):
        owner = quotas.owner_of(store, str(task_id))
    if not user.is_admin:
        if owner is None:
            raise HTTPException(404, f"No task {task_id} was started by you")
        if owner["user"] != user.user:
            raise HTTPException(403, "Access denied: this task belongs to another user")
    return str(task_id), owner


VisibleTask = Annotated[tuple[str, dict | None], Depends(visible_task)]
