"""Dead letters and job records: what the recovery service writes besides Prefect states.

* ``dead_letters`` (contract): one document per run that used every recovery attempt:
  ``{task_id, flow_name, deployment, parameters, attempts: [{run_count, state, message, at}],
  reason, created_at, requeued_at, requeued_by}``. Listed by ``botai status`` and the
  gateway; an admin re-queues one (same flow-run id, attempts counted from 1 again).
* Job records (``training_jobs``, ``task_results``) whose status is still open are set to
  the run's real outcome, with the reason, so no record says "running" for a run that is not.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from core import exceptions as errors
from integrations.store import C, Store

if TYPE_CHECKING:
    from collections.abc import Sequence

#: Message prefix of the Scheduled state an admin's re-queue sets (attempts restart at 1).
REQUEUE_MARK = "requeued from dead letters"
#: Name of the Failed state of a dead-lettered run.
DEAD_LETTERED = "DeadLettered"
#: Job-record collections reconciled with Prefect, and their statuses that are not final.
RECORD_COLLECTIONS = (C.TRAINING_JOBS, C.TASK_RESULTS)
OPEN_STATUSES = ("running", "queued", "pending", "recovering")


class AttemptLike(Protocol):
    state: str
    message: str

    def as_doc(self) -> dict[str, Any]: ...


def dead_letter_doc(
    client: Any, run: Any, attempts: Sequence[AttemptLike], now: datetime
) -> dict[str, Any]:
    """The ``dead_letters`` document of ``run`` (contract: parameters, every attempt's error)."""
    flow_name = client.read_flow(run.flow_id).name
    deployment = client.read_deployment(run.deployment_id).name if run.deployment_id else None
    last = attempts[-1]
    return {
        "task_id": str(run.id),
        "flow_name": flow_name,
        "deployment": f"{flow_name}/{deployment}" if deployment else None,
        "run_name": run.name,
        "parameters": run.parameters,
        "attempts": [a.as_doc() for a in attempts],
        "reason": (
            f"dead-lettered after {len(attempts)} attempts; last: {last.state}: {last.message[:500]}"
        ),
        "created_at": now,
        "requeued_at": None,
        "requeued_by": None,
    }


def save_dead_letter(store: Store, doc: dict[str, Any]) -> None:
    """Write the whole dead-letter document of ``doc["task_id"]`` (insert or replace)."""
    store.dead_letters.dead_letter_save(doc)


def dead_letter_summary(store: Store, limit: int = 20) -> list[dict[str, Any]]:
    """Dead letters not re-queued, newest first: task_id, flow_name, attempts, reason, created_at.

    For ``botai status`` and the gateway.
    """
    docs = store.dead_letters.dead_letters_list(limit=limit)
    return [
        {
            "task_id": d["task_id"],
            "flow_name": d.get("flow_name"),
            "attempts": len(d.get("attempts") or []),
            "reason": d.get("reason"),
            "created_at": d.get("created_at"),
        }
        for d in docs
    ]


def requeue_dead_letter(store: Store, task_id: str, by: str) -> dict[str, Any]:
    """Put a dead-lettered run back in its queue (same id; attempts start again at 1).

    Returns the updated dead-letter document.

    Raises:
        NotFoundError: no dead letter of ``task_id``, or it was already re-queued.
        PrefectUnavailableError: the Prefect API does not answer.
    """
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    from deployments.run_processes import forget_process

    doc = store.dead_letters.dead_letter_get(task_id)
    if doc is None or doc.get("requeued_at") is not None:
        raise errors.NotFoundError(f"No dead letter awaiting re-queue for task {task_id}")
    try:
        with get_client(sync_client=True) as client:
            forget_process(client, UUID(task_id))  # its process is gone
            client.set_flow_run_state(
                UUID(task_id), Scheduled(message=f"{REQUEUE_MARK} by {by}"), force=True
            )
    except httpx.TransportError as e:
        raise errors.PrefectUnavailableError(f"Prefect API unreachable: {e}") from e
    doc.update(requeued_at=datetime.now(UTC), requeued_by=by)
    save_dead_letter(store, doc)
    return doc


def work_saved(store: Store, task_id: str) -> bool:
    """True when the run's work is done and saved: its ``training_jobs`` record says
    ``completed`` or a model it trained is registered, or its ``backtest_results``/``optimization_results``/``task_results``
    document exists (flows save it once, at their end).

    A run that crashed after that point is marked Completed instead of re-run (exactly once).
    """
    job = store.jobs.training_job_get(task_id)
    if job is not None and job.get("status") == "completed":
        return True
    if store.models.model_trained_by(task_id) is not None:
        return True  # registration is the training's last step of substance
    for name in (C.BACKTEST_RESULTS, C.OPTIMIZATION_RESULTS):
        if store.jobs.result_get(name, task_id) is not None:
            return True
    result = store.jobs.task_result_get(task_id)
    return result is not None and result.get("status") not in OPEN_STATUSES


def mark_record_completed(store: Store, task_id: str, state: Any) -> None:
    """Set the ``training_jobs`` record of a run whose work was saved to ``completed`` (its
    dying process may have written ``failed``), with the model it registered."""
    doc = store.jobs.training_job_get(task_id)
    if doc is None or doc.get("status") == "completed":
        return
    model = store.models.model_trained_by(task_id)
    doc.update(
        status="completed",
        error=None,
        status_reason=f"work saved before the process ended ({state.name}: {state.message})",
        finished_at=doc.get("finished_at") or datetime.now(UTC),
        updated_at=datetime.now(UTC),
        progress_pct=100.0,
    )
    if model is not None:
        doc.update(model_id=model.get("model_id"), model_path=model.get("file_path"))
    store.jobs.training_job_save(doc)


def record_status(state: Any) -> str | None:
    """The job-record status of a Prefect state; None while the run is not final."""
    kind = state.type.value
    if kind == "FAILED" and state.name == DEAD_LETTERED:
        return "dead-lettered"
    return {
        "COMPLETED": "completed",
        "FAILED": "failed",
        "CRASHED": "crashed",
        "CANCELLED": "cancelled",
    }.get(kind)


def reconcile_records(client: Any, store: Store, reconciled: list[str]) -> None:
    """Set open job records (``running``/``queued``) of final or re-queued runs to the truth."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    for name in RECORD_COLLECTIONS:
        docs = store.jobs.records_in_status(name, OPEN_STATUSES)
        ids = []
        for d in docs:
            try:
                ids.append(UUID(str(d.get("task_id"))))
            except ValueError:
                continue
        if not ids:
            continue
        runs = {
            str(r.id): r
            for r in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)), limit=len(ids)
            )
        }
        for doc in docs:
            run = runs.get(str(doc.get("task_id")))
            if run is None or run.state is None:
                continue
            status = record_status(run.state)
            if status is None:
                if doc["status"] == "running" and run.state.type.value == "SCHEDULED":
                    status = "queued"  # re-queued by recovery; the next attempt writes "running"
                else:
                    continue
            doc.update(
                status=status,
                error=doc.get("error") if status == "completed" else run.state.message,
                status_reason=f"reconciled with Prefect state {run.state.name}",
                updated_at=datetime.now(UTC),
            )
            if status != "queued":
                doc["finished_at"] = doc.get("finished_at") or run.state.timestamp
            if status == "completed" and name == C.TRAINING_JOBS and not doc.get("model_id"):
                model = store.models.model_trained_by(doc["task_id"])
                if model is not None:
                    doc.update(model_id=model.get("model_id"), model_path=model.get("file_path"))
            if status != "completed" and doc.get("progress_pct") == 100:
                doc["progress_pct"] = 99.0
            store.jobs.record_save(name, doc)
            reconciled.append(str(doc["task_id"]))


def dead_letter_status(settings: Any) -> list[dict[str, Any]] | str:
    """For ``botai status``: :func:`dead_letter_summary` of the stack on ``settings``.

    Returns the list (JSON-ready), or a sentence saying why it could not be read.
    """
    from blocks.loader import load_store
    from deployments.up import prefect_api

    try:
        with prefect_api(settings):
            letters = dead_letter_summary(load_store())
    except Exception as e:  # the store or the API is down: status still answers
        return f"dead letters unavailable ({type(e).__name__}: {e})"
    for d in letters:
        if isinstance(d.get("created_at"), datetime):
            d["created_at"] = d["created_at"].isoformat()
    return letters
