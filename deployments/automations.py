"""Automations the run command creates: crash detection for runs whose process died.

A killed worker or flow process leaves its run ``Running`` for ever. Flow runs emit a
heartbeat every ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds (set by the run command);
this automation marks a run ``Crashed`` when neither a heartbeat nor a terminal state
arrives within ``Settings.crash_after_s`` (at least two heartbeat periods) of its last
heartbeat. It only sees runs that sent a heartbeat; runs whose process died before, or
whose process is gone while the state says Pending/Running, are found by the recovery
service (deployments/recovery.py), which also re-runs every Crashed run.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from prefect.automations import Automation
from prefect.client.schemas.objects import StateType
from prefect.events.actions import ChangeFlowRunState
from prefect.events.schemas.automations import EventTrigger, Posture
from prefect.events.schemas.events import ResourceSpecification

from core.settings import Settings

log = logging.getLogger(__name__)

CRASH_DETECTION = "botai-crash-detection"


def crash_after_s(settings: Settings) -> int:
    """Seconds of heartbeat silence that mean a dead or hung process.

    ``Settings.crash_after_s``, but at least two heartbeat periods: with one period only, a
    heartbeat delayed by a busy process (a JIT compile holding the GIL, a loaded machine)
    marks a live run Crashed and the recovery service would then kill and re-run it.
    """
    wanted = max(settings.crash_after_s, 2 * settings.heartbeat_s)
    if wanted != settings.crash_after_s:
        log.warning(
            "crash_after_s %d s is shorter than two heartbeats (%d s): using %d s",
            settings.crash_after_s,
            2 * settings.heartbeat_s,
            wanted,
        )
    return wanted


def crash_detection_automation(settings: Settings) -> Automation:
    """The crash-detection automation (not saved). Returns an unsaved :class:`Automation`."""
    silence_s = crash_after_s(settings)
    return Automation(
        name=CRASH_DETECTION,
        description=(
            f"Mark a flow run Crashed when it sends no heartbeat for {silence_s} s "
            "(its process or worker died, or it hangs); the recovery service then re-runs it."
        ),
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={
                "prefect.flow-run.heartbeat",
                "prefect.flow-run.Completed",
                "prefect.flow-run.Failed",
                "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed",
            },
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=silence_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {silence_s} s: the flow process died or hangs.",
            )
        ],
    )


def ensure_crash_detection(settings: Settings) -> Automation:
    """Create the crash-detection automation, or update the one of the same name.

    Idempotent: there is exactly one automation named :data:`CRASH_DETECTION` afterwards.
    Uses the Prefect API of the current settings context. Returns the saved automation.
    """
    wanted = crash_detection_automation(settings)
    try:
        existing = Automation.read(name=CRASH_DETECTION)
    except ValueError:
        saved = wanted.create()
        log.info("created automation %s", CRASH_DETECTION)
        return saved
    wanted.id = existing.id
    wanted.update()
    return wanted
