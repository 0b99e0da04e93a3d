"""``GET /metrics``: the platform's metrics in the Prometheus text format.

Computed at scrape time by :class:`deployments.metrics.PlatformCollector` from the Prefect API
and the gateway's store (docs/monitoring.md, "Metrics and alerts"). Not a user endpoint: it
is left out of the OpenAPI document, holds no user data (labels are deployments, queues,
workers, model keys) and needs no user token. ``BOTAI_METRICS_TOKEN`` set: it answers only
``Authorization: Bearer <that token>`` (Prometheus: ``authorization: {credentials_file: ...}``);
unset: anyone who reaches the gateway may read it, so keep the path off a public proxy.
"""

from __future__ import annotations

import hmac
import threading
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from core.settings import Settings, load_settings

router = APIRouter()
_lock = threading.Lock()


def _registry(app: Any) -> tuple[CollectorRegistry, Settings]:
    """The app's registry and platform settings, made on the first scrape.

    The settings are ``app.state.platform_settings`` when set (tests set it), else the
    environment's (:func:`core.settings.load_settings`). Returns (registry, settings).
    """
    from deployments.metrics import PlatformCollector

    state = app.state
    with _lock:
        if getattr(state, "metrics_registry", None) is None:
            settings = getattr(state, "platform_settings", None) or load_settings()

            def store() -> Any:  # the gateway's store (api.deps.get_store), made once
                from api.deps import _store_lock

                with _store_lock:
                    if state.store is None:
                        state.store = state.store_factory()
                    return state.store

            registry = CollectorRegistry()
            registry.register(PlatformCollector(settings, store))
            state.platform_settings, state.metrics_registry = settings, registry
        return state.metrics_registry, state.platform_settings


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """The metrics (text format 0.0.4). A source that fails or is slow is reported in
    ``botai_scrape_errors`` instead of failing the scrape.

    Raises:
        HTTPException: 401 when ``BOTAI_METRICS_TOKEN`` is set and the request lacks it.
    """
    registry, settings = _registry(request.app)
    if settings.metrics_token is not None:
        expected = f"Bearer {settings.metrics_token.get_secret_value()}".encode()
        sent = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(sent, expected):
            raise HTTPException(
                401,
                "Metrics need 'Authorization: Bearer <BOTAI_METRICS_TOKEN>'",
                {"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
