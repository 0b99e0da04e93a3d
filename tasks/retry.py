"""The one retry policy of every task: only :class:`core.exceptions.RetryableError` is retried."""

from __future__ import annotations

from typing import Any

from core.exceptions import RetryableError


def retry_only_retryable(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: True only when the task failed with a RetryableError.

    Operational errors (bad input, missing data, a peer saying no) fail at once.
    """
    try:
        state.result()
    except RetryableError:
        return True
    except BaseException:
        return False
    return False
