"""The session's Prefect test server runs a flow and stores its result state."""

from __future__ import annotations

import pytest
from prefect import flow, task

pytestmark = pytest.mark.tc("none")


@task
def _double(x: int) -> int:
    return 2 * x


@flow(name="harness-smoke")
def _smoke(x: int) -> int:
    return _double(x)


def test_flow_runs_against_session_server(prefect_server: str) -> None:
    state = _smoke(21, return_state=True)
    assert state.is_completed()
    assert state.result() == 42
    assert prefect_server.startswith("http://")
