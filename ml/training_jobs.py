"""The ``training_jobs`` record of a training run: created or reopened when the run starts,
written whole at every step (nx-27017 stores ``$set`` datetimes as text), per-epoch metrics
at most once a second (:class:`EpochRecorder`).

Pure layer (no Prefect, no model code): ``train-model`` imports it at flow start.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from core.schemas.training import TrainModelParams

if TYPE_CHECKING:
    from integrations.store import Store

#: Per-epoch metrics reach ``training_jobs`` at most this often (and at the end).
JOB_WRITE_INTERVAL_S = 1.0


def new_job(params: TrainModelParams, run_id: str) -> dict[str, Any]:
    """The ``training_jobs`` document of a run that starts now (attempt 1)."""
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
        "attempts": 1,
        "resumed_from_epoch": None,
        "epochs": [],
        "progress_pct": 0.0,
        "device": None,
        "results": None,
        "model_id": None,
        "model_path": None,
        "deployment": None,
        "error": None,
    }


def open_job(store: Store, params: TrainModelParams, run_id: str, run_count: int = 1) -> dict:
    """The job record of this flow run: new, or the existing one reopened when the run runs
    again under the same id (a recovery re-run): attempts + 1, status running, error cleared.

    Returns:
        the document (already written).
    """
    existing = store.training_job_get(run_id)
    if existing is None:
        job = new_job(params, run_id)
        job["attempts"] = max(1, run_count)
    else:
        job = {**new_job(params, run_id), **existing}
        job.update(
            attempts=max(int(existing.get("attempts") or 1) + 1, run_count),
            status="running",
            error=None,
            finished_at=None,
        )
    save_job(store, job)
    return job


def save_job(store: Store, job: dict[str, Any], **changes: Any) -> None:
    """Apply ``changes`` to ``job`` and write the whole document (one per task id)."""
    job.update(changes, updated_at=datetime.now(UTC))
    store.training_job_save(job)


class EpochRecorder:
    """The ``on_epoch`` hook of a training: appends each epoch's metrics to the job record
    and reports progress (10 % to 90 % over the epochs).

    The record is written at most every :data:`JOB_WRITE_INTERVAL_S` and at the last epoch;
    progress is reported in steps of at least 5 %.
    """

    def __init__(
        self, store: Store, job: dict[str, Any], progress: Callable[[float, str], None]
    ) -> None:
        self.store, self.job, self.progress = store, job, progress
        self.last_write, self.last_pct = 0.0, 10.0

    def __call__(self, epoch: int, epochs: int, record: dict[str, float]) -> None:
        pct = 10 + 80 * epoch / epochs
        self.job["epochs"].append(record)
        self.job["progress_pct"] = round(pct, 1)
        # whole-document writes (nx-27017): at most one a second; the final write has them all
        if time.monotonic() - self.last_write >= JOB_WRITE_INTERVAL_S or epoch == epochs:
            save_job(self.store, self.job)
            self.last_write = time.monotonic()
        if pct - self.last_pct >= 5 or epoch == epochs:
            self.progress(pct, f"Training epoch {epoch}/{epochs}")
            self.last_pct = pct
