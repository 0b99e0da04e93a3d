"""Progress reporting as a Prefect progress artifact (0 -> 100) with a stage label."""

from __future__ import annotations

import logging
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

log = logging.getLogger(__name__)


class ProgressReporter:
    """One progress artifact per run, updated in place.

    Updates are API calls, so :meth:`update` only sends when progress moved by at least
    ``min_step_pct`` (or the stage changed, or 100 is reached). The last value and stage
    stay readable on the object (``progress``, ``stage``, ``history``).

    Args:
        key: artifact key (lower-case letters, digits and dashes), e.g. ``train-lstm-btcusdt``.
        min_step_pct: smallest change worth an update; 5 gives the spec's "every 5%".
    """

    def __init__(self, key: str, *, min_step_pct: float = 1.0, stage: str = "Initializing") -> None:
        self.key = key
        self.min_step_pct = min_step_pct
        self.progress = 0.0
        self.stage = stage
        self.history: list[tuple[float, str]] = [(0.0, stage)]
        self._id: UUID = create_progress_artifact(0.0, key=key, description=stage)

    @property
    def artifact_id(self) -> UUID:
        return self._id

    def update(self, progress: float, stage: str | None = None) -> None:
        """Move to ``progress`` percent (clamped to 0-100, never backwards) at ``stage``."""
        progress = max(self.progress, min(100.0, float(progress)))
        stage = stage or self.stage
        if (
            progress - self.progress < self.min_step_pct
            and stage == self.stage
            and not (progress == 100.0 and self.progress < 100.0)
        ):
            return
        self.progress, self.stage = progress, stage
        self.history.append((progress, stage))
        update_progress_artifact(self._id, progress, description=stage)
        log.debug("progress %s: %.1f%% %s", self.key, progress, stage)
