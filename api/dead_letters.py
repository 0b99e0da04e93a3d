"""Dead letters over HTTP (admins): ``GET /api/dead-letters`` lists the runs that used every
recovery attempt; ``POST /api/dead-letters/{task_id}/requeue`` puts one back in its queue
under the same task id (attempts counted from 1 again). ``GET /api/tasks/{id}`` shows a
run's dead letter to whoever may see the task (TC-ASYNC-103)."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Path

from api.deps import StoreDep, require_admin
from api.schemas import DeadLetterInfo
from api.security import Principal
from deployments.dead_letters import dead_letter_summary, requeue_dead_letter

router = APIRouter(prefix="/api/dead-letters", tags=["dead letters"])

Admin = Annotated[Principal, Depends(require_admin)]


@router.get("")
def list_dead_letters(_admin: Admin, store: StoreDep, limit: int = 100) -> dict[str, Any]:
    """Dead letters not re-queued yet, newest first (admin)."""
    letters = dead_letter_summary(store, limit=max(1, min(limit, 1000)))
    return {"dead_letters": [DeadLetterInfo(**d) for d in letters], "count": len(letters)}


@router.post("/{task_id}/requeue", status_code=202)
def requeue(
    task_id: Annotated[UUID, Path(description="The dead-lettered run's task id.")],
    admin: Admin,
    store: StoreDep,
) -> dict[str, Any]:
    """Schedule the dead-lettered run again (same task id); 404 when none awaits re-queue."""
    doc = requeue_dead_letter(store, str(task_id), by=admin.user)
    return {
        "task_id": doc["task_id"],
        "status": "PENDING",
        "status_url": f"/api/tasks/{doc['task_id']}",
        "requeued_at": doc["requeued_at"],
        "requeued_by": doc["requeued_by"],
    }
