"""Dead letters over HTTP (admins): ``GET /api/dead-letters`` lists the runs that used every
recovery attempt; ``POST /api/dead-letters/{task_id}/requeue`` puts one back in its queue
under the same task id (attempts counted from 1 again). ``GET /api/tasks/{id}`` shows a
run's dead letter to whoever may see the task (TC-ASYNC-103)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Query

from api.deps import StoreDep, no_unknown_query, require_admin
from api.routes import answers
from api.schemas import DeadLetterInfo, DeadLetterList, Requeued
from api.security import Principal
from deployments.dead_letters import dead_letter_summary, requeue_dead_letter

router = APIRouter(
    prefix="/api/dead-letters", tags=["dead letters"], dependencies=[Depends(no_unknown_query)]
)

Admin = Annotated[Principal, Depends(require_admin)]


@router.get("", responses=answers(401, 403, 422, 500, 503, s403="Admin privileges required."))
def list_dead_letters(
    _admin: Admin,
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many (1-1000).")] = 100,
) -> DeadLetterList:
    """Dead letters not re-queued yet, newest first (admin)."""
    letters = dead_letter_summary(store, limit=limit)
    return DeadLetterList(dead_letters=[DeadLetterInfo(**d) for d in letters], count=len(letters))


@router.post(
    "/{task_id:uuid}/requeue",
    status_code=202,
    responses=answers(
        401,
        403,
        404,
        422,
        500,
        503,
        s403="Admin privileges required.",
        s404="No dead letter of this task awaits re-queue.",
    ),
)
def requeue(
    task_id: Annotated[UUID, Path(description="The dead-lettered run's task id.")],
    admin: Admin,
    store: StoreDep,
) -> Requeued:
    """Schedule the dead-lettered run again (same task id); 404 when none awaits re-queue."""
    doc = requeue_dead_letter(store, str(task_id), by=admin.user)
    return Requeued(
        task_id=doc["task_id"],
        status_url=f"/api/tasks/{doc['task_id']}",
        requeued_at=doc["requeued_at"],
        requeued_by=doc["requeued_by"],
    )
