"""``train-model``: train an LSTM/GRU/Transformer direction model and register it.

Steps: reject a duplicate (same model_type+symbol+timeframe queued or running) -> load the
newest ``days_of_data`` of candles -> train with checkpoints (tasks.training) -> register the
encrypted model as a candidate (deployed only if none is deployed yet) -> result.

Time limits: the soft limit (parameter ``soft_time_limit_s``, default 2 h) checkpoints and
fails the run inside the training loop; the hard limit is this flow's ``timeout_seconds``
(2.5 h): Prefect interrupts the flow body, the loop writes a checkpoint of the last completed
epoch and the run ends Failed (TimedOut). Cancelling (UI/CLI/API) makes the worker send
SIGTERM; the same checkpoint is written before the process exits and the run is Cancelled.
Concurrency (2 at once, FIFO) is the ``ml_training`` work queue's limit (see prefect.yaml).
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run

from blocks.loader import load_block, load_store
from blocks.model_store import ModelStoreBlock
from core.schemas.training import HARD_TIME_LIMIT_S, TrainModelParams, TrainModelResult
from core.settings import Settings
from tasks.progress import ProgressReporter
from tasks.results import save_task_result
from tasks.training import (
    load_training_candles,
    new_job,
    reject_duplicate_training,
    save_job,
    train_and_register,
)


@flow(name="train-model", timeout_seconds=HARD_TIME_LIMIT_S, validate_parameters=True)
def train_model(params: TrainModelParams) -> TrainModelResult:
    """Train one model. Returns a :class:`TrainModelResult`; raises on every failure."""
    run_id = str(flow_run.get_id())
    logger = get_run_logger()
    progress = ProgressReporter(
        f"train-{params.model_type}-{params.symbol}-{params.timeframe}".lower(),
        min_step_pct=5,
        stage="Initializing",
    )
    reject_duplicate_training(params, run_id)
    store = load_store()
    model_store = load_block(ModelStoreBlock)
    settings = Settings()
    job = new_job(params, run_id)
    save_job(store, job)
    status, error = "failed", None
    try:
        progress.update(5, "Loading data")
        candles = load_training_candles(store, params)
        result = train_and_register(
            store,
            params,
            candles,
            run_id,
            progress,
            job,
            model_dir=model_store.directory,
            model_key=model_store.get_key(),
            settings=settings,
        )
        status = "completed"
        progress.update(100, "Complete")
        logger.info(
            "trained %s: val_accuracy %.3f (baselines %s), model %s",
            params.training_key,
            result.training_results.val_accuracy,
            result.training_results.baselines,
            result.model_id,
        )
        return save_task_result(result, store)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        raise
    except TerminationSignal:
        status, error = "cancelled", "cancelled or terminated (checkpoint of the last epoch kept)"
        raise
    except BaseException as e:  # the flow's timeout (hard limit) interrupts the body this way
        error = (
            f"interrupted ({type(e).__name__}): hard time limit of {HARD_TIME_LIMIT_S:g} s or "
            "a crash; checkpoint of the last epoch kept, rerun with resume=true"
        )
        raise
    finally:
        if status != "completed" and job.get("status") == "running":
            save_job(store, job, status=status, error=error, finished_at=datetime.now(UTC))
