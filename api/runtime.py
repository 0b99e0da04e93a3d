"""What the gateway keeps between requests to create runs in one API round trip.

* **Prefect clients**: one synchronous client per (API URL, credentials, timeout), opened on
  first use and closed at exit (as ``integrations.store.shared_client`` keeps one pymongo
  client per URI). A client per request cost 20-30 ms (a new HTTP client, TLS context and
  connection) at load 3-4; the shared one keeps its connections open. Its timeout is the
  gateway's (``api.outages.prefect_bounded`` is in force when it is built).
* **Deployment ids**: ``flow/deployment`` name -> id, per API URL. A run is created from
  the cached id; when the server answers 404 (the deployment was deleted and registered
  again under a new id), the id is read again and the run created once more. A redeploy
  that keeps the id (``prefect deploy`` updates in place) needs nothing: the server takes
  pool, queue and defaults from the deployment when it creates the run.
* **Withdrawn runs**: a run the gateway cancelled because it could not record it carries
  :data:`WITHDRAWN` in its state message (:func:`withdraw`); :func:`create_run` never hands
  back such a run for a replayed idempotency key, it creates a new one.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
    WorkQueueFilter,
    WorkQueueFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from prefect.states import Cancelled, Scheduled

from core.exceptions import ConfigurationError

log = logging.getLogger(__name__)

#: State message prefix of a run the gateway cancelled because it could not record it.
WITHDRAWN = "Withdrawn by the gateway"
#: Clients kept at most (one per API URL and credentials in practice; tests switch URLs).
MAX_CLIENTS = 8

_lock = threading.Lock()
_clients: dict[tuple[str, str, float], SyncPrefectClient] = {}
_deployments: dict[tuple[str, str], UUID] = {}


def _api_key() -> tuple[str, str, float] | None:
    """(API URL, hash of its credentials, request timeout) of the current settings."""
    from prefect.settings import (
        PREFECT_API_AUTH_STRING,
        PREFECT_API_KEY,
        PREFECT_API_REQUEST_TIMEOUT,
        PREFECT_API_URL,
    )

    url = PREFECT_API_URL.value()
    if not url:
        return None  # an ephemeral in-process API: a client per call, as Prefect does

    def secret(value: Any) -> str:
        raw = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        return "" if raw is None else str(raw)

    creds = secret(PREFECT_API_KEY.value()) + "\0" + secret(PREFECT_API_AUTH_STRING.value())
    return (
        url,
        hashlib.sha256(creds.encode()).hexdigest(),
        float(PREFECT_API_REQUEST_TIMEOUT.value()),
    )


@contextmanager
def prefect_client() -> Iterator[SyncPrefectClient]:
    """The shared synchronous client of the current Prefect settings (opened on first use,
    left open when the block ends; closed at exit). Without an API URL (Prefect's ephemeral
    in-process API) a client of the block's own, closed when it ends.
    """
    key = _api_key()
    if key is None:
        with get_client(sync_client=True) as own:
            yield own
        return
    with _lock:
        client = _clients.get(key)
        if client is None:
            if len(_clients) >= MAX_CLIENTS:
                _close(_clients.pop(next(iter(_clients))))
            client = _clients[key] = get_client(sync_client=True).__enter__()
    yield client


def _close(client: SyncPrefectClient) -> None:
    try:
        client.__exit__(None, None, None)
    except Exception:  # noqa: BLE001 - closing at exit or eviction: nothing to report to
        log.debug("closing a Prefect client failed", exc_info=True)


@atexit.register
def close_clients() -> None:
    """Close every shared client (at exit; tests may call it)."""
    with _lock:
        while _clients:
            _close(_clients.pop(next(iter(_clients))))
        _deployments.clear()


def deployment_id(client: SyncPrefectClient, name: str, *, fresh: bool = False) -> UUID:
    """The id of deployment ``name`` (``flow/deployment``): cached per API URL.

    Raises:
        ConfigurationError: the deployment is not registered.
    """
    key = (str(client.api_url), name)
    if not fresh:
        with _lock:
            cached = _deployments.get(key)
        if cached is not None:
            return cached
    try:
        found = client.read_deployment_by_name(name).id
    except ObjectNotFound:
        with _lock:
            _deployments.pop(key, None)
        raise ConfigurationError(
            f"deployment {name} is not registered: start the stack with "
            "'botai up' (or run 'prefect deploy --all')"
        ) from None
    with _lock:
        _deployments[key] = found
    return found


def is_withdrawn(run: FlowRun) -> bool:
    """True when ``run`` is one the gateway withdrew (:func:`withdraw`)."""
    state = run.state
    return (
        state is not None
        and state.type == StateType.CANCELLED
        and (state.message or "").startswith(WITHDRAWN)
    )


def withdraw(client: SyncPrefectClient, run_id: UUID, why: str) -> None:
    """Cancel a run the gateway created but could not record (its state says so).

    Raises:
        Prefect client errors: the caller decides (the gateway logs them).
    """
    client.set_flow_run_state(run_id, Cancelled(message=f"{WITHDRAWN}: {why}"), force=True)


def create_run(
    client: SyncPrefectClient,
    deployment: str,
    parameters: dict[str, Any],
    tags: list[str],
    idempotency_key: str | None,
    high_priority: bool,
) -> FlowRun:
    """Create a run of ``deployment``: one API call when its id is cached and the priority
    is normal.

    With ``idempotency_key``, Prefect returns the run it created for that key before; when
    that run was withdrawn, a new run is created under a key derived from the withdrawn
    run's id (the same for concurrent retries, so they still share one run).

    Raises:
        ConfigurationError: the deployment is not registered.
        PrefectHTTPStatusError, httpx errors: the API refused or did not answer.
    """
    dep_id = deployment_id(client, deployment)
    state = None
    if high_priority:
        found = client.read_deployment(dep_id)
        at = high_priority_time(client, found.work_pool_name, found.work_queue_name)
        state = Scheduled(scheduled_time=at) if at is not None else None
    key = idempotency_key
    for _ in range(3):
        try:
            run = _create(client, dep_id, parameters, tags, key, state)
        except (ObjectNotFound, PrefectHTTPStatusError) as e:
            if isinstance(e, PrefectHTTPStatusError) and e.response.status_code != 404:
                raise
            log.info("deployment %s has a new id: reading it again", deployment)
            dep_id = deployment_id(client, deployment, fresh=True)
            run = _create(client, dep_id, parameters, tags, key, state)
        if key is None or not is_withdrawn(run):
            return run
        key = f"{idempotency_key}:after:{run.id}"
    return run


def _create(
    client: SyncPrefectClient,
    dep_id: UUID,
    parameters: dict[str, Any],
    tags: list[str],
    key: str | None,
    state: Any,
) -> FlowRun:
    return client.create_flow_run_from_deployment(
        dep_id, parameters=parameters, tags=tags, idempotency_key=key, state=state
    )


def high_priority_time(client: Any, pool: str | None, queue: str | None) -> datetime | None:
    """When a high-priority run must be scheduled to start before every normal-priority run
    waiting on its work queue, after the high-priority runs already waiting (FIFO among them).

    A worker takes a queue's runs in the order of their scheduled start time, as many as
    the queue's concurrency limit allows (Prefect's ``get_scheduled_flow_runs`` query), so
    the run is scheduled just before the oldest waiting normal run: it shares the queue's
    limit (never more trainings at once) and is next when a slot frees. Prefect's queue
    priorities order runs across queues only, each queue with its own limit.

    Returns:
        the scheduled time, or None when no normal run waits (now is then first anyway).
    """
    if not pool or not queue:
        return None
    waiting = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
        ),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[queue])),
        sort=FlowRunSort.NEXT_SCHEDULED_START_TIME_ASC,
        limit=200,
    )
    now = datetime.now(UTC)

    def at(run: FlowRun) -> datetime:
        return run.next_scheduled_start_time or run.expected_start_time or now

    normal = [at(r) for r in waiting if "priority:high" not in (r.tags or [])]
    if not normal or min(normal) >= now:
        return None
    first_normal = min(normal)
    high = [at(r) for r in waiting if "priority:high" in (r.tags or []) and at(r) < first_normal]
    if not high:
        return first_normal - timedelta(seconds=1)
    return max(high) + (first_normal - max(high)) / 2
