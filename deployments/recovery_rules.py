"""The rules of crash recovery (:mod:`deployments.recovery`): which failures are retried (a
:class:`core.exceptions.RetryableError`, never a time limit), how a run's attempts are counted
from its state history, and the backoff between attempts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core import exceptions as errors
from core.settings import Settings
from deployments.dead_letters import DEAD_LETTERED, REQUEUE_MARK

#: Message prefix of the Scheduled state a resubmission sets (attempts are counted by it).
RECOVERY_MARK = "recovered after crash"


def retryable_error_names() -> set[str]:
    """Class names of :class:`core.exceptions.RetryableError` and all its subclasses."""
    names, todo = set(), [errors.RetryableError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return names


def is_time_limit(state: Any) -> bool:
    """True for a run ended by a time limit (contract: such runs are never resubmitted)."""
    message = (state.message or "").lower()
    return state.name == "TimedOut" or "time limit" in message or "exceeded timeout" in message


#: Errors of a run that lost the Prefect API (httpx transport errors): its work may be saved.
API_LOST_ERRORS = (
    "ConnectError",
    "ConnectTimeout",
    "ReadError",
    "ReadTimeout",
    "WriteError",
    "RemoteProtocolError",
    "PoolTimeout",
)


def is_api_lost(state: Any) -> bool:
    """True when a Failed state's message names an httpx transport error: the run lost the
    Prefect API (a server restart, a cut link), not its work."""
    message = state.message or ""
    return any(re.search(rf"\b{name}\b", message) for name in API_LOST_ERRORS)


def is_retryable_failure(state: Any) -> bool:
    """True when a Failed state's message names a retryable error or a lost Prefect API
    (and no time limit)."""
    if state.name == DEAD_LETTERED or is_time_limit(state):
        return False
    message = state.message or ""
    if is_api_lost(state):
        return True
    return any(re.search(rf"\b{name}\b", message) for name in retryable_error_names())


def awaits_recovery(state: Any) -> bool:
    """True when recovery will act on a run that ended in ``state``: a Crashed run, or a
    Failed one whose error is retryable (re-run, or set Completed when its work was saved);
    False for final outcomes (dead-lettered, time limit, bad input, Completed, Cancelled).
    """
    kind = state.type.value
    if state.name == DEAD_LETTERED or is_time_limit(state):
        return False
    if kind == "CRASHED":
        return True
    return kind == "FAILED" and is_retryable_failure(state)


@dataclass
class Attempt:
    """One execution of a run that ended badly (a Crashed or Failed state)."""

    run_count: int
    state: str
    message: str
    at: datetime

    def as_doc(self) -> dict[str, Any]:
        return {
            "run_count": self.run_count,
            "state": self.state,
            "message": self.message,
            "at": self.at,
        }


def ended_attempts(states: list[Any]) -> list[Attempt]:
    """The attempts since the last re-queue from dead letters, oldest first.

    ``states`` is the run's state history (``read_flow_run_states``): every Crashed or
    Failed state ends one attempt.
    """
    attempts: list[Attempt] = []
    runs = 0
    for s in sorted(states, key=lambda s: s.timestamp):
        if s.type.value == "SCHEDULED" and (s.message or "").startswith(REQUEUE_MARK):
            attempts = []
        elif s.type.value == "RUNNING":
            runs += 1
        elif s.type.value in ("CRASHED", "FAILED") and s.name != DEAD_LETTERED:
            attempts.append(Attempt(runs, s.name, s.message or "", s.timestamp))
    return attempts


def backoff_s(settings: Settings, attempts_done: int) -> float:
    """Wait after the ``attempts_done``-th failed attempt before the next one, seconds."""
    return min(
        settings.recovery_backoff_s * 2 ** max(0, attempts_done - 1),
        settings.recovery_backoff_max_s,
    )
