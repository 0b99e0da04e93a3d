"""The progress artifact on the session's Prefect server: intermediate updates leave the
job at once and reach the artifact in order (only ever forward); 100 is on the server
before ``update(100)`` returns."""

from __future__ import annotations

import threading
import time
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client

from tasks.progress import ProgressReporter


def _artifact(artifact_id: UUID) -> tuple[float, str]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterId

    with get_client(sync_client=True) as client:
        (found,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[artifact_id]))
        )
        return float(found.data), str(found.description)


@pytest.mark.tc("TC-ASYNC-021", "TC-ASYNC-071")
def test_updates_are_sent_in_the_background_forward_only_and_100_before_returning(
    prefect_server: str,
):
    reporter = ProgressReporter("progress-reporter-test", min_step_pct=10)
    seen: list[tuple[float, str]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            seen.append(_artifact(reporter.artifact_id))
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        for pct in range(10, 100, 10):
            reporter.update(pct, f"stage {pct}")
        assert reporter.flush()
        assert _artifact(reporter.artifact_id) == (90.0, "stage 90")  # the latest, not lost
        reporter.update(100, "Complete")
        assert _artifact(reporter.artifact_id) == (100.0, "Complete")  # sent, not queued
    finally:
        stop.set()
        poller.join(5)
    values = [v for v, _ in seen]
    assert values == sorted(values)  # never backwards, whatever was coalesced
    assert reporter.history[-1] == (100.0, "Complete") and len(reporter.history) == 11


@pytest.mark.tc("TC-ASYNC-021")
def test_without_background_every_update_is_on_the_server_when_it_returns(prefect_server: str):
    reporter = ProgressReporter("progress-reporter-sync", min_step_pct=5, background=False)
    reporter.update(35, "Training epoch 7/20")
    assert _artifact(reporter.artifact_id) == (35.0, "Training epoch 7/20")
