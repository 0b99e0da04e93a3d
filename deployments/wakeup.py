"""Pickup on event: the warm worker polls its queues at once when a run of its pool is
scheduled, instead of waiting for the next poll.

The Prefect server emits ``prefect.flow-run.Scheduled`` when a run enters Scheduled (a
new run from a deployment, a run set back to Scheduled by crash recovery), with the run's
work pool among its related resources, and streams it over the ``/events/out`` websocket.
:class:`ScheduledRunWaker` listens to that stream and, for every event of the worker's
pool, triggers one ``get_and_submit_flow_runs`` (bursts are coalesced into one poll).

Polling stays as it was and remains the guarantee: an event that is lost (websocket down,
server restarting) only means the run is picked up by the next poll. A poll started by an
event is the worker's ordinary poll: the Pending proposal is still the claim, so a run is
never submitted twice (the worker also skips runs it is already submitting).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

#: Name of the event the server emits when a flow run enters Scheduled.
SCHEDULED_EVENT = "prefect.flow-run.Scheduled"

#: Seconds before the listener connects again after its subscription failed.
RECONNECT_S = 5.0


def event_pool_id(event: Any) -> str | None:
    """The work-pool id among an event's related resources, or None."""
    for resource in getattr(event, "related", []) or []:
        rid = str(resource.id)
        if rid.startswith("prefect.work-pool."):
            return rid.removeprefix("prefect.work-pool.")
    return None


class ScheduledRunWaker:
    """Listens for runs scheduled on one work pool and triggers an immediate poll.

    Args:
        poll: the worker's ``get_and_submit_flow_runs``.
        pool_id: returns the id of the worker's pool (None until the worker has synced:
            events are then taken for any pool, which costs at most an empty poll).
        logger: where subscription trouble is reported (at debug level: polling covers it).
    """

    def __init__(
        self,
        poll: Callable[[], Awaitable[Any]],
        pool_id: Callable[[], str | None],
        logger: logging.Logger,
    ) -> None:
        self._poll = poll
        self._pool_id = pool_id
        self._logger = logger
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start listening and polling on wake-up (in the running event loop)."""
        self._tasks = [
            asyncio.create_task(self._listen(), name="botai-scheduled-listener"),
            asyncio.create_task(self._poll_on_wake(), name="botai-wake-poller"),
        ]

    async def stop(self) -> None:
        """Stop both tasks and wait for them."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def concerns_us(self, event: Any) -> bool:
        """True for a Scheduled event of this worker's pool (any pool before the sync)."""
        if getattr(event, "event", None) != SCHEDULED_EVENT:
            return False
        ours = self._pool_id()
        theirs = event_pool_id(event)
        return theirs is not None and (ours is None or theirs == str(ours))

    async def _listen(self) -> None:
        from prefect.events.clients import get_events_subscriber
        from prefect.events.filters import EventFilter, EventNameFilter

        flt = EventFilter(event=EventNameFilter(name=[SCHEDULED_EVENT]))
        while True:
            try:
                async with get_events_subscriber(filter=flt) as subscriber:
                    async for event in subscriber:
                        if self.concerns_us(event):
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the server restarting, the websocket closed: poll on
                self._logger.debug("scheduled-run events unavailable (%s); polling only", e)
            await asyncio.sleep(RECONNECT_S)

    async def _poll_on_wake(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()  # events arriving during the poll cause one more poll
            try:
                await self._poll()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the regular polling loop reports persistent failures
                self._logger.debug("poll on wake-up failed: %s", e)
