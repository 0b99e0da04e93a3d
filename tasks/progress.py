"""Progress reporting as a Prefect progress artifact (0 -> 100) with a stage label."""

from __future__ import annotations

import contextvars
import logging
import threading
from uuid import UUID

from prefect.artifacts import create_progress_artifact, update_progress_artifact

log = logging.getLogger(__name__)

#: Seconds :meth:`ProgressReporter.flush` waits for the sender before giving up.
FLUSH_TIMEOUT_S = 10.0


class ProgressReporter:
    """One progress artifact per run, updated in place.

    Updates are API calls, so :meth:`update` only sends when progress moved by at least
    ``min_step_pct`` (or the stage changed, or 100 is reached). The last value and stage
    stay readable on the object (``progress``, ``stage``, ``history``).

    Intermediate updates are sent by a background thread, so the job never waits for them
    (a backtest's nine stage updates had taken 0.2 s of its 1 s): while one is being sent,
    newer ones replace each other and only the latest goes out next, so the artifact only
    ever moves forward. Reaching 100 waits for what is in flight and sends 100 from the
    caller: a run never completes before its artifact says 100.

    Args:
        key: artifact key (lower-case letters, digits and dashes), e.g. ``train-lstm-btcusdt``.
        min_step_pct: smallest change worth an update; 5 gives the spec's "every 5%".
        background: send intermediate updates from the background thread (False: every
            update is sent before :meth:`update` returns).
    """

    def __init__(
        self,
        key: str,
        *,
        min_step_pct: float = 1.0,
        stage: str = "Initializing",
        background: bool = True,
    ) -> None:
        self.key = key
        self.min_step_pct = min_step_pct
        self.progress = 0.0
        self.stage = stage
        self.history: list[tuple[float, str]] = [(0.0, stage)]
        self.background = background
        self._id: UUID = create_progress_artifact(0.0, key=key, description=stage)
        self._cond = threading.Condition()
        self._pending: tuple[float, str] | None = None
        self._sending = False
        self._sender: threading.Thread | None = None

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
        log.debug("progress %s: %.1f%% %s", self.key, progress, stage)
        if progress >= 100.0 or not self.background:
            self.flush()
            update_progress_artifact(self._id, progress, description=stage)
            return
        with self._cond:
            self._pending = (progress, stage)
            self._cond.notify_all()
            if self._sender is None:
                context = contextvars.copy_context()  # the run's Prefect settings and client
                self._sender = threading.Thread(
                    target=context.run, args=(self._send_loop,), name="progress", daemon=True
                )
                self._sender.start()

    def flush(self, timeout_s: float = FLUSH_TIMEOUT_S) -> bool:
        """Wait until every update handed to the sender is sent (or failed).

        Returns:
            True when nothing is left to send, False when ``timeout_s`` ran out.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: self._pending is None and not self._sending, timeout=timeout_s
            )

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                progress, stage = self._pending  # type: ignore[misc]
                self._pending, self._sending = None, True
            try:
                update_progress_artifact(self._id, progress, description=stage)
            except Exception as e:  # noqa: BLE001 - a progress view must never fail the job
                log.warning("progress %s not updated to %.0f%%: %s", self.key, progress, e)
            finally:
                with self._cond:
                    self._sending = False
                    self._cond.notify_all()
