"""The one retry policy: a RetryableError is retried, an OperationalError fails at once."""

from __future__ import annotations

import pytest
from prefect import flow, task

from core.exceptions import InvalidInputError, ServiceUnavailableError
from tasks.retry import retry_only_retryable


def _flaky_task(error: Exception, failures: int, calls: list[int]):
    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=retry_only_retryable)
    def flaky() -> int:
        calls.append(1)
        if len(calls) <= failures:
            raise error
        return len(calls)

    return flaky


@pytest.mark.tc("TC-ASYNC-079", "TC-ASYNC-082")
def test_retryable_error_is_retried_until_success(prefect_server: str) -> None:
    calls: list[int] = []
    flaky = _flaky_task(ServiceUnavailableError("peer restarting"), 2, calls)

    @flow
    def run() -> int:
        return flaky()

    assert run() == 3
    assert len(calls) == 3


@pytest.mark.tc("TC-ASYNC-083")
def test_operational_error_is_not_retried(prefect_server: str) -> None:
    calls: list[int] = []
    flaky = _flaky_task(InvalidInputError("bad symbol"), 5, calls)

    @flow
    def run() -> int:
        return flaky()

    with pytest.raises(InvalidInputError):
        run()
    assert len(calls) == 1
