"""Prefect tasks of ``train-model``: duplicate check, data loading, training slots, and the
thin task around the model lifecycle (``ml.lifecycle``: hold out, train, score, register,
deploy only if better). Only :class:`core.exceptions.RetryableError` is retried.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import TerminationSignal
from prefect.tasks import exponential_backoff
from pydantic import ValidationError

from core.exceptions import (
    DuplicateRunError,
    InsufficientDataError,
    InvalidInputError,
)
from core.market import bars_per_day
from core.schemas.training import (
    TrainModelParams,
    TrainModelResult,
    duplicate_message,
)
from core.settings import Settings
from integrations.store import Store
from tasks.progress import ProgressReporter
from tasks.retry import retry_only_retryable

log = logging.getLogger(__name__)

FLOW_NAME = "train-model"
#: Global concurrency limit every training holds a slot of (created by the bootstrap).
TRAINING_LIMIT = "ml-training"
#: Trainings at once, platform-wide (the ``ml_training`` queue's limit too).
TRAINING_SLOTS = 2
#: A training slot of a process that died frees itself this long after its last renewal.
SLOT_LEASE_S = 60.0
#: States of a run that is queued or running (AwaitingConcurrencySlot and Late are SCHEDULED).
ACTIVE_STATE_TYPES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]


# ---------------------------------------------------------------- duplicates
def find_active_trainings(
    model_type: str,
    symbol: str,
    timeframe: str,
    *,
    exclude_run_id: UUID | str | None = None,
    created_before: datetime | None = None,
    client: Any = None,
) -> list[FlowRun]:
    """Queued or running ``train-model`` runs of the same model_type+symbol+timeframe.

    Works for runs created from the UI, the CLI or HTTP alike (it reads the Prefect API).
    The HTTP gateway (api/) calls it (through :func:`assert_no_active_training`) before it
    creates a run; the flow calls it at start for runs created earlier than itself.

    Args:
        client: an open synchronous Prefect client to use (the gateway's shared one), or
            None for a client of its own.

    Returns:
        matching runs, oldest first.
    """
    runs: list[FlowRun] = []
    with nullcontext(client) if client is not None else get_client(sync_client=True) as client:
        while True:  # the API returns at most 200 per page
            page = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE_STATE_TYPES))
                ),
                limit=200,
                offset=len(runs),
            )
            runs.extend(page)
            if len(page) < 200:
                break
    out = []
    for run in runs:
        if exclude_run_id is not None and str(run.id) == str(exclude_run_id):
            continue
        if created_before is not None and run.created is not None and run.created >= created_before:
            continue
        raw = (run.parameters or {}).get("params", {})
        try:
            other = TrainModelParams.model_validate(raw)
        except ValidationError:
            continue
        if (other.model_type, other.symbol, other.timeframe) == (model_type, symbol, timeframe):
            out.append(run)
    return sorted(out, key=lambda r: r.created or datetime.min.replace(tzinfo=UTC))


def assert_no_active_training(
    model_type: str,
    symbol: str,
    timeframe: str,
    *,
    exclude_run_id: UUID | str | None = None,
    created_before: datetime | None = None,
    client: Any = None,
) -> None:
    """Pre-check for the HTTP gateway and the flow (``client``: see find_active_trainings).

    Raises:
        DuplicateRunError: 'Training already in progress for lstm+BTCUSDT' (names the run).
    """
    active = find_active_trainings(
        model_type,
        symbol,
        timeframe,
        exclude_run_id=exclude_run_id,
        created_before=created_before,
        client=client,
    )
    if active:
        first = active[0]
        raise DuplicateRunError(
            f"{duplicate_message(model_type, symbol)} ({timeframe}, run {first.name} {first.id}, "
            f"state {first.state_name}); wait for it to finish or cancel it"
        )


@task(name="reject-duplicate-training", cache_policy=NONE)
def reject_duplicate_training(params: TrainModelParams, run_id: str) -> None:
    """Fail this run if an earlier run of the same key is still queued or running.

    Raises:
        DuplicateRunError: see :func:`assert_no_active_training`.
    """
    with get_client(sync_client=True) as client:
        me = client.read_flow_run(UUID(run_id))
    assert_no_active_training(
        params.model_type,
        params.symbol,
        params.timeframe,
        exclude_run_id=run_id,
        created_before=me.created,
    )


# ---------------------------------------------------------------- data
def expected_samples(params: TrainModelParams) -> int:
    """Candles needed: days_of_data x bars per day (30 days of 1h -> 720)."""
    return params.days_of_data * bars_per_day(params.timeframe)


@task(
    name="load-training-candles",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def load_training_candles(store: Store, params: TrainModelParams) -> pd.DataFrame:
    """The newest ``days_of_data`` of candles.

    Raises:
        InvalidInputError: 'Invalid trading symbol' when no candle of the symbol is stored.
        InsufficientDataError: 'Insufficient data: expected 720 samples, found 120'.
    """
    expected = expected_samples(params)
    candles = store.load_candles(params.symbol, params.timeframe, last_n=expected)
    if candles.empty:
        raise InvalidInputError(
            f"Invalid trading symbol {params.symbol!r}: no {params.timeframe} candles stored; "
            "load market data for it first"
        )
    if len(candles) < expected:
        raise InsufficientDataError(
            f"Insufficient data: expected {expected} samples, found {len(candles)} "
            f"({params.symbol} {params.timeframe}); load more history or lower days_of_data"
        )
    get_run_logger().info(
        "loaded %d %s candles of %s (%s to %s)",
        len(candles),
        params.timeframe,
        params.symbol,
        candles.index[0],
        candles.index[-1],
    )
    return candles


# ---------------------------------------------------------------- training slots
def ensure_training_limit(limit: int = TRAINING_SLOTS) -> None:
    """Create (or align) the global concurrency limit every training takes a slot of.

    The bootstrap calls it beside the work pool. Without it :func:`training_slot` would not
    limit anything, so every code path that trains (a train-model run on the ``ml_training``
    queue, a train-model subflow of adaptive-retrain on the ``analysis`` queue) shares it.
    """
    from prefect.client.schemas.actions import (
        GlobalConcurrencyLimitCreate,
        GlobalConcurrencyLimitUpdate,
    )
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            current = client.read_global_concurrency_limit_by_name(TRAINING_LIMIT)
        except ObjectNotFound:
            client.create_global_concurrency_limit(
                GlobalConcurrencyLimitCreate(name=TRAINING_LIMIT, limit=limit)
            )
            return
        if current.limit != limit or not current.active:
            client.update_global_concurrency_limit(
                TRAINING_LIMIT, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
            )


@contextmanager
def training_slot(progress: ProgressReporter | None = None) -> Iterator[None]:
    """Hold one of the platform's training slots (global concurrency limit ``ml-training``)
    while the body trains; wait for one when all are taken.

    The slot is a lease (:data:`SLOT_LEASE_S`) the Prefect client renews while this process
    lives; when the process dies the lease expires and the slot frees by itself, so a killed
    run never holds a slot for long. Without the limit (no bootstrap) nothing is limited and
    a warning is logged.
    """
    from prefect.concurrency.sync import concurrency

    if progress is not None:
        progress.update(progress.progress, "Waiting for a training slot")
    started = time.monotonic()
    with concurrency(TRAINING_LIMIT, occupy=1, strict=False, lease_duration=SLOT_LEASE_S):
        waited = time.monotonic() - started
        if waited >= 1.0:
            get_run_logger().info("waited %.1f s for a training slot", waited)
        yield


# ---------------------------------------------------------------- cancellation
def _runner_intent() -> str | None:
    """The intent the Prefect runner recorded in this flow process ("cancel"), or None.

    Reads Prefect 3.9's control listener (a private module); without it, always None.
    """
    try:
        from prefect._internal.control_listener import get_intent
    except ImportError:  # pragma: no cover - another Prefect version
        return None
    return get_intent()


class CancelWatch:
    """Stops training when a cancel was requested but its SIGTERM did not stop it.

    A worker cancels a run in two steps: it records the intent "cancel" in the flow process
    over its control channel, then sends SIGTERM, which Prefect turns into a
    ``TerminationSignal`` in the main thread. Under Prefect 3.9.1 with Keras on JAX we saw
    the intent arrive and the training go on: in about one cancel in four, no
    ``TerminationSignal`` surfaced. The worker then killed the process after its 30 s grace,
    so the job stayed "running" with no checkpoint of the last epoch.

    Called after every batch (``ml.training.train``'s ``check_interrupt``). When the intent
    has been "cancel" for ``grace_s`` while training goes on, it raises the
    ``TerminationSignal`` itself. That is the same exception the SIGTERM would have raised,
    so the loop checkpoints, the job is recorded "cancelled" and the engine reports the run
    Cancelled. The grace keeps it from racing a SIGTERM that is merely on its way.
    """

    def __init__(
        self,
        grace_s: float = 2.0,
        intent: Callable[[], str | None] = _runner_intent,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace_s, self._intent, self._clock = grace_s, intent, clock
        self._since: float | None = None
        self._fired = False

    def __call__(self) -> None:
        """Return, or raise ``TerminationSignal(SIGTERM)`` (see the class)."""
        if self._intent() != "cancel":
            self._since = None
            return
        now = self._clock()
        if self._since is None:
            self._since = now
        elif now - self._since >= self.grace_s:
            if not self._fired:  # Keras may call this from several callback threads at once
                self._fired = True
                log.warning(
                    "cancel requested %.1f s ago but no termination signal arrived: stopping "
                    "the training at this batch",
                    now - self._since,
                )
            raise TerminationSignal(signal.SIGTERM)


# ---------------------------------------------------------------- training
@task(name="train-and-register", cache_policy=NONE)
def train_and_register(
    store: Store,
    params: TrainModelParams,
    candles: pd.DataFrame,
    run_id: str,
    progress: ProgressReporter,
    job: dict[str, Any],
    *,
    model_dir: Path,
    model_key: bytes,
    settings: Settings,
    run_count: int = 1,
    fit: Any = None,
    extra_callbacks: Sequence[Any] = (),
) -> TrainModelResult:
    """Run ``ml.lifecycle.train_and_register`` with this run's progress, cancel watch and logger.

    Returns:
        the flow's result (``deployment`` says whether the deploy rule deployed the model).

    Raises:
        see ``ml.lifecycle.train_and_register``.
    """
    from ml import lifecycle
    from ml.checkpoints import CheckpointStore
    from ml.economics import EconomicsConfig
    from ml.registry import ModelRegistry
    from ml.shared_files import SharedFiles

    logger = get_run_logger()
    hooks = lifecycle.Hooks(
        progress=progress.update,
        check_interrupt=CancelWatch(),
        logger=logger,
        fit=fit,
        extra_callbacks=extra_callbacks,
    )
    return lifecycle.train_and_register(
        store,
        params,
        candles,
        run_id,
        job,
        registry=ModelRegistry(store, model_dir, model_key),
        checkpoints=CheckpointStore(
            settings.checkpoint_dir,
            params.model_type,
            params.symbol,
            params.timeframe,
            model_key,
            files=SharedFiles(store.blobs, settings.checkpoint_dir),
        ),
        min_free_disk_gb=settings.min_free_disk_gb,
        checkpoint_every_s=settings.checkpoint_every_s,
        run_count=run_count,
        hooks=hooks,
        deploy_rule=settings.deploy_rule,
        economics=EconomicsConfig(
            fee_bps=settings.economics_fee_bps,
            slippage_bps=settings.economics_slippage_bps,
            block_bars=settings.economics_block_bars,
            bootstrap_samples=settings.economics_bootstrap_samples,
        ),
    )
