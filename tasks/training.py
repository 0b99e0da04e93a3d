"""Prefect tasks of ``train-model``: duplicate check, data loading, training, registration.

Thin wrappers: the work happens in :mod:`ml` (features, training loop, registry) and
:mod:`integrations.store`. Only :class:`core.exceptions.RetryableError` is retried.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
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
    TrainingResults,
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
#: States of a run that is queued or running (AwaitingConcurrencySlot and Late are SCHEDULED).
ACTIVE_STATE_TYPES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING]
#: Per-epoch metrics reach ``training_jobs`` at most this often (and at the end).
JOB_WRITE_INTERVAL_S = 1.0


# ---------------------------------------------------------------- duplicates
def find_active_trainings(
    model_type: str,
    symbol: str,
    timeframe: str,
    *,
    exclude_run_id: UUID | str | None = None,
    created_before: datetime | None = None,
) -> list[FlowRun]:
    """Queued or running ``train-model`` runs of the same model_type+symbol+timeframe.

    Works for runs created from the UI, the CLI or HTTP alike (it reads the Prefect API).
    The HTTP gateway (api/) calls it (through :func:`assert_no_active_training`) before it
    creates a run; the flow calls it at start for runs created earlier than itself.

    Returns:
        matching runs, oldest first.
    """
    runs: list[FlowRun] = []
    with get_client(sync_client=True) as client:
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
) -> None:
    """Pre-check for the HTTP gateway and the flow.

    Raises:
        DuplicateRunError: 'Training already in progress for lstm+BTCUSDT' (names the run).
    """
    active = find_active_trainings(
        model_type,
        symbol,
        timeframe,
        exclude_run_id=exclude_run_id,
        created_before=created_before,
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


# ---------------------------------------------------------------- jobs
def new_job(params: TrainModelParams, run_id: str) -> dict[str, Any]:
    """The ``training_jobs`` document of a run that starts now."""
    now = datetime.now(UTC)
    return {
        "task_id": run_id,
        "training_key": params.training_key,
        "model_type": params.model_type,
        "symbol": params.symbol,
        "timeframe": params.timeframe,
        "parameters": params.model_dump(),
        "status": "running",
        "created_at": now,
        "updated_at": now,
        "finished_at": None,
        "epochs": [],
        "progress_pct": 0.0,
        "device": None,
        "results": None,
        "model_id": None,
        "model_path": None,
        "error": None,
    }


def save_job(store: Store, job: dict[str, Any], **changes: Any) -> None:
    """Apply ``changes`` to ``job`` and write the whole document."""
    job.update(changes, updated_at=datetime.now(UTC))
    store.training_job_save(job)


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
    fit: Any = None,
    extra_callbacks: Sequence[Any] = (),
) -> TrainModelResult:
    """Train (or resume / warm-start), measure on the held-out split, register the model.

    The model is registered as a candidate and deployed only when no model of the same
    type+symbol+timeframe is deployed yet; later replacements are decided by adaptive
    retraining. A cancelled or failed run registers nothing (its checkpoint stays on disk).

    Returns:
        the flow's result.

    Raises:
        TrainingError: diverged, out of memory at the minimum batch size, soft time limit,
            not enough disk.
        InsufficientDataError: too few complete samples for the split.
    """
    from ml.features import FeatureSpec, prepare_dataset
    from ml.registry import ModelRegistry
    from ml.training import (
        CheckpointStore,
        TrainConfig,
        TrainingStopped,
        check_free_disk,
        detect_device,
        train,
    )

    logger = get_run_logger()
    check_free_disk(settings.checkpoint_dir, settings.min_free_disk_gb)
    device = detect_device()
    if device == "cpu":
        logger.warning("GPU not available, using CPU")
    registry = ModelRegistry(store, model_dir, model_key)
    checkpoints = CheckpointStore(
        settings.checkpoint_dir, params.model_type, params.symbol, params.timeframe, model_key
    )
    resume_from = checkpoints.latest() if params.resume else None
    if params.resume and resume_from is None:
        logger.warning(
            "resume=true but no checkpoint of %s exists: training from scratch", params.training_key
        )
    spec: FeatureSpec | None = None
    initial_weights = None
    units = params.units
    if resume_from is not None:
        spec = FeatureSpec.from_dict(resume_from.meta["feature_spec"])
        units = int(resume_from.meta.get("config", {}).get("units", units))
    elif params.mode == "incremental":
        deployed = registry.deployed(params.symbol, params.timeframe, params.model_type)
        if deployed is None:
            raise InvalidInputError(
                f"mode=incremental needs a deployed {params.model_type} model for "
                f"{params.symbol} {params.timeframe}; train with mode=scratch first"
            )
        base = registry.load(deployed)
        spec = FeatureSpec.from_dict(deployed.feature_spec)
        initial_weights = base.model.get_weights()
        units = int(deployed.extra.get("units", units))
        logger.info(
            "incremental: warm start from model %s v%d", deployed.model_id, deployed.version
        )
    dataset = prepare_dataset(
        candles,
        lookback=params.lookback,
        horizon_bars=params.horizon_bars,
        validation_split=params.validation_split,
        spec=spec,
    )
    save_job(store, job, device=device, train_samples=len(dataset.y_train))
    progress.update(10, "Loading data")

    last_write = [0.0]

    def on_epoch(epoch: int, epochs: int, record: dict[str, float]) -> None:
        pct = 10 + 80 * epoch / epochs
        job["epochs"].append(record)
        job["progress_pct"] = round(pct, 1)
        # whole-document writes (nx-27017): at most one a second; the final write has them all
        if time.monotonic() - last_write[0] >= JOB_WRITE_INTERVAL_S or epoch == epochs:
            save_job(store, job)
            last_write[0] = time.monotonic()
        if pct - progress.progress >= 5 or epoch == epochs:
            progress.update(pct, f"Training epoch {epoch}/{epochs}")

    config = TrainConfig(
        model_type=params.model_type,
        epochs=params.epochs,
        batch_size=params.batch_size,
        learning_rate=params.learning_rate,
        checkpoint_interval=params.checkpoint_interval,
        early_stopping_patience=params.early_stopping_patience,
        soft_time_limit_s=params.soft_time_limit_s,
        units=units,
    )
    try:
        outcome = train(
            dataset,
            config,
            checkpoints=checkpoints,
            run_id=run_id,
            resume=resume_from,
            initial_weights=initial_weights,
            on_epoch=on_epoch,
            fit=fit,
            extra_callbacks=extra_callbacks,
            check_interrupt=CancelWatch(),
        )
    except TrainingStopped as e:
        save_job(
            store,
            job,
            status="failed",
            error=str(e),
            finished_at=datetime.now(UTC),
            epochs_completed=e.epochs_completed,
            checkpoint_path=str(e.checkpoint_path) if e.checkpoint_path else None,
        )
        raise
    progress.update(92, "Saving")
    results = TrainingResults(
        final_loss=outcome.final_loss,
        validation_loss=outcome.validation_loss,
        val_accuracy=outcome.val_metrics["accuracy"],
        precision=outcome.val_metrics["precision"],
        recall=outcome.val_metrics["recall"],
        f1=outcome.val_metrics["f1"],
        baselines={k: v["accuracy"] for k, v in outcome.baselines.items()},
        training_time_seconds=outcome.training_time_seconds,
        epochs_completed=outcome.epochs_completed,
        best_epoch=outcome.best_epoch,
        device=device,
        resumed_from_epoch=outcome.resumed_from_epoch,
        batch_size=outcome.batch_size,
        train_samples=len(dataset.y_train),
        validation_samples=len(dataset.y_val),
    )
    metrics = {
        "val_accuracy": outcome.val_metrics["accuracy"],
        "precision": outcome.val_metrics["precision"],
        "recall": outcome.val_metrics["recall"],
        "f1": outcome.val_metrics["f1"],
        "validation_loss": outcome.validation_loss,
        "final_loss": outcome.final_loss,
        "baselines": outcome.baselines,
        "validation_samples": len(dataset.y_val),
        "validation_start": dataset.t_val[0].isoformat(),
        "validation_end": dataset.t_val[-1].isoformat(),
        "epochs_completed": outcome.epochs_completed,
        "best_epoch": outcome.best_epoch,
        "device": device,
    }
    record = registry.register(
        outcome.model,
        model_type=params.model_type,
        symbol=params.symbol,
        timeframe=params.timeframe,
        metrics=metrics,
        feature_spec=outcome.spec.to_dict(),
        horizon_bars=outcome.spec.horizon_bars,
        created_by=params.requested_by,
        training_task_id=run_id,
        extra={"units": units, "mode": params.mode, "days_of_data": params.days_of_data},
    )
    if registry.deployed(params.symbol, params.timeframe, params.model_type) is None:
        record = registry.deploy(record.model_id, by="train-model (first model of its kind)")
        logger.info("no %s model was deployed: deployed %s", params.training_key, record.model_id)
    result = TrainModelResult(
        status="success",
        model_type=params.model_type,
        symbol=params.symbol,
        timeframe=params.timeframe,
        training_results=results,
        model_id=record.model_id,
        model_path=record.file_path,
        model_status=record.status,
        task_id=run_id,
    )
    save_job(
        store,
        job,
        status="completed",
        finished_at=datetime.now(UTC),
        results=results.model_dump(),
        model_id=record.model_id,
        model_path=record.file_path,
        val_accuracy=results.val_accuracy,
    )
    return result
