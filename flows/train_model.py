"""``train-model``: train an LSTM/GRU/Transformer direction model, register it, and deploy it
only if it beats the deployed model and the naive baselines on held-out bars.

Steps: reject a duplicate (same model_type+symbol+timeframe queued or running) -> open the job
record (reopened on a re-run) -> load the newest ``days_of_data`` of candles -> take a training
slot (global concurrency limit ``ml-training``, 2 platform-wide) -> the model lifecycle
(``tasks.training.train_and_register`` -> ``ml.lifecycle``: hold out the newest bars, train with
checkpoints, score, register, deploy only if better) -> the economic evaluation's artifact
(``economics-<type>-<symbol>-<tf>``: figures with SEs, equity curves of the model against
buy-and-hold and logistic regression) -> result.

Re-runs: when this flow run runs again under the same id (crash recovery sets it back to
Scheduled; ``run_count`` > 1) it resumes from its own newest checkpoint and reaches the full
epoch count, whatever the stored ``resume`` says; the job record is updated (attempts,
resumed_from_epoch), not duplicated.

Time limits: the soft limit (parameter ``soft_time_limit_s``, default 2 h) checkpoints and
fails the run inside the training loop; the hard limit is this flow's ``timeout_seconds``
(2.5 h): Prefect interrupts the flow body, the loop writes a checkpoint of the last completed
epoch and the run ends Failed with "hard time limit" in its message. Both say "time limit", and
neither is Crashed, so crash recovery leaves them alone. Cancelling (UI/CLI/API) makes the
worker send SIGTERM; the same checkpoint is written before the process exits and the run is
Cancelled.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run

from blocks.loader import load_block, load_store
from blocks.model_store import ModelStoreBlock
from core.exceptions import TrainingError
from core.schemas.training import HARD_TIME_LIMIT_S, TrainModelParams, TrainModelResult
from core.settings import load_settings
from ml.training_jobs import open_job, save_job
from tasks.economics import publish_economics_artifact
from tasks.progress import ProgressReporter
from tasks.results import save_task_result
from tasks.training import (
    load_training_candles,
    reject_duplicate_training,
    train_and_register,
    training_slot,
)


def _hard_limit_s() -> float:
    """This run's hard limit (the flow's ``timeout_seconds``, options included)."""
    ctx = FlowRunContext.get()
    limit = ctx.flow.timeout_seconds if ctx is not None and ctx.flow is not None else None
    return float(limit or HARD_TIME_LIMIT_S)


@flow(name="train-model", timeout_seconds=HARD_TIME_LIMIT_S, validate_parameters=True)
def train_model(params: TrainModelParams) -> TrainModelResult:
    """Train one model. Returns a :class:`TrainModelResult`; raises on every failure."""
    run_id = str(flow_run.get_id())
    run_count = int(flow_run.run_count or 1)
    logger = get_run_logger()
    progress = ProgressReporter(
        f"train-{params.model_type}-{params.symbol}-{params.timeframe}".lower(),
        min_step_pct=5,
        stage="Initializing",
    )
    reject_duplicate_training(params, run_id)
    store = load_store()
    model_store = load_block(ModelStoreBlock)
    settings = load_settings()
    job = open_job(store, params, run_id, run_count)
    status, error = "failed", None
    try:
        progress.update(5, "Loading data")
        candles = load_training_candles(store, params)
        with training_slot(progress):
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
                run_count=run_count,
            )
        status = "completed"
        if result.economics is not None:
            publish_economics_artifact(
                result.economics,
                f"economics-{params.model_type}-{params.symbol}-{params.timeframe}".lower(),
                run_id,
                settings,
                f"{params.model_type} {params.symbol} {params.timeframe} on held-out bars",
            )
        progress.update(100, "Complete")
        logger.info(
            "trained %s: val_accuracy %.3f, held-out accuracy %.3f, model %s %s",
            params.training_key,
            result.training_results.val_accuracy,
            result.training_results.holdout_accuracy,
            result.model_id,
            result.model_status,
        )
        return save_task_result(result, store)
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        raise
    except TerminationSignal:
        status, error = "cancelled", "cancelled or terminated (checkpoint of the last epoch kept)"
        raise
    except asyncio.CancelledError as e:  # the flow's timeout interrupts the body this way
        error = (
            f"Training stopped at the hard time limit of {_hard_limit_s():g} s; checkpoint of "
            "the last completed epoch kept: rerun with resume=true to continue"
        )
        raise TrainingError(error) from e  # Failed with "time limit", never Crashed
    except BaseException as e:
        error = (
            f"interrupted ({type(e).__name__}); checkpoint of the last epoch kept, a re-run of "
            "this flow run resumes from it"
        )
        raise
    finally:
        if status != "completed" and job.get("status") == "running":
            save_job(store, job, status=status, error=error, finished_at=datetime.now(UTC))
