"""The crash-detection automation `botai up` creates: idempotent, proactive, marks Crashed."""

from __future__ import annotations

import pytest
from prefect.client.orchestration import get_client

from core.settings import load_settings
from deployments.automations import CRASH_DETECTION, ensure_crash_detection

pytestmark = pytest.mark.tc("TC-ASYNC-077")


def test_crash_detection_is_created_once_and_updated(prefect_server: str):
    first = ensure_crash_detection(load_settings(crash_after_s=90))
    second = ensure_crash_detection(load_settings())  # again, with the default 60 s
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(CRASH_DETECTION)
    assert len(found) == 1 and found[0].id == first.id == second.id
    automation = found[0]
    trigger = automation.trigger
    assert trigger.posture == "Proactive"
    assert trigger.within.total_seconds() == 60  # updated in place, not duplicated
    assert trigger.after == {"prefect.flow-run.heartbeat"}
    assert "prefect.flow-run.Completed" in trigger.expect
    assert [a.type for a in automation.actions] == ["change-flow-run-state"]
    assert automation.actions[0].state.value == "CRASHED"
