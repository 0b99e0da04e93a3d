"""The recovery lease: with several recovery replicas (one per host, or two for safety) only
the replica holding the lease acts.

The lease is one MongoDB document (``locks``, ``_id`` :data:`LEASE_NAME`) taken and renewed
through the store (:meth:`integrations.store.Store.lock_acquire`): its holder renews it at
the start of every pass; a holder that stops renewing (dead, cut off, paused) loses it
``recovery_lease_s`` after its last renewal and another replica takes over. A holder acts
only while its own lease is younger than ``recovery_lease_s`` minus a safety margin
(:meth:`RecoveryLease.valid`), so two replicas never act at once as long as their clocks
agree within that margin. Without a store no replica can prove it holds the lease: it acts
only when ``alone`` (a one-machine stack with a single recovery service).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any

log = logging.getLogger(__name__)

#: ``_id`` of the lease document in ``locks``.
LEASE_NAME = "recovery-service"
#: Part of the lease a holder does not use, so a slow pass never overlaps a successor.
SAFETY = 0.5


class RecoveryLease:
    """The lease of one recovery replica (owner ``host:pid`` unless given)."""

    def __init__(self, ttl_s: float, owner: str | None = None) -> None:
        self.ttl_s = ttl_s
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        self._renewed_at: float | None = None
        self.holder: str | None = None

    def acquire(self, store: Any) -> bool:
        """Take or renew the lease. Returns True when this replica holds it now.

        Raises:
            StoreUnavailableError: MongoDB unreachable (the replica must not act).
        """
        started = time.monotonic()
        held = store.lock_acquire(LEASE_NAME, self.owner, self.ttl_s, note="recovery lease")
        if held is None:
            if self._renewed_at is None:
                log.info("recovery lease taken by %s", self.owner)
            self._renewed_at = started
            self.holder = self.owner
            return True
        if self._renewed_at is not None:
            log.warning("recovery lease lost to %s", held.get("owner"))
        self._renewed_at = None
        self.holder = held.get("owner")
        return False

    def valid(self) -> bool:
        """True while the lease taken by :meth:`acquire` may still be acted on."""
        return (
            self._renewed_at is not None
            and time.monotonic() - self._renewed_at < self.ttl_s * SAFETY
        )

    def release(self, store: Any) -> None:
        """Give the lease up (a stopping replica), so another takes over at once."""
        if self._renewed_at is not None:
            store.lock_release(LEASE_NAME, self.owner)
            self._renewed_at = None
