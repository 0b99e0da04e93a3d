"""No leaked concurrency slots: global concurrency limits (the ``ml-training`` slots) whose
slots are held by holders that are gone are freed.

Prefect holds a global-concurrency slot through a lease the holder renews; its repossessor
service frees the slots of a lease that expired. With Prefect's default lease storage
(``...lease_storage.memory``) the leases live in the server process: after a ``kill -9`` of
the server the limit's ``active_slots`` stay taken with no lease left to expire, and every
later training waits for ever. The embedded stack therefore runs the server with Prefect's
file lease storage (:data:`FILE_LEASE_STORAGE`, leases in ``$PREFECT_HOME/concurrency_leases``,
written atomically): leases survive a server death, living holders renew them after the
restart and the repossessor frees those of holders that died. The HA setup uses
prefect-redis's lease storage the same way.

:func:`free_leaked_slots` (a recovery rule, on the server's host) frees what the leases
cannot account for, reading the same lease files:

1. a lease whose holder (the flow or task run named in the lease) is in a final state is
   released at once through the API (``decrement-with-lease``), not after its expiry;
2. slots taken beyond what the leases hold (``active_slots`` minus the leased
   slots: a lease lost with the memory storage, a server killed between taking a slot and
   writing its lease) are released when the same surplus is seen in two passes at least
   :data:`SURPLUS_CONFIRM_S` apart (one look could fall between a slot taken and its lease
   written), never more than the smaller of the two.

The rule does nothing when the server does not use the file storage or its folder is not
on this host (the HA setup: Redis's leases expire by themselves).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from core.settings import Settings

log = logging.getLogger(__name__)

#: Prefect's lease storage that keeps leases in files (survives a server kill -9).
FILE_LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"
#: Two looks at a slot surplus at least this far apart before it is released, seconds.
SURPLUS_CONFIRM_S = 5.0


def lease_dir(settings: Settings) -> Path:
    """Where the server's file lease storage keeps its leases (``$PREFECT_HOME``)."""
    return Path(settings.prefect_home) / "concurrency_leases"


def file_leases(folder: Path) -> list[dict[str, Any]]:
    """The lease documents in ``folder`` (unreadable or half-written files are skipped)."""
    out = []
    for path in folder.glob("*.json"):
        if path.name == "expirations.json":
            continue
        try:
            doc = json.loads(path.read_text())
            doc["expires"] = datetime.fromisoformat(doc["expiration"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(doc)
    return out


def _holder_gone(client: Any, holder: dict[str, Any] | None) -> bool:
    """True when the lease holder (a flow or task run) is in a final state."""
    if not holder or not holder.get("id"):
        return False
    read = {"flow_run": client.read_flow_run, "task_run": client.read_task_run}.get(
        holder.get("type", "")
    )
    if read is None:
        return False
    try:
        state = read(UUID(str(holder["id"]))).state
    except Exception:  # noqa: BLE001 - unknown holder: leave its lease to expire
        return False
    return state is not None and state.is_final()


def free_leaked_slots(
    client: Any,
    settings: Settings,
    now: datetime | None = None,
    surplus_seen: dict[str, tuple[datetime, int]] | None = None,
) -> list[str]:
    """Release the slots of gone holders and the confirmed surplus (see the module doc).

    ``surplus_seen`` (kept between passes by the caller) remembers each limit's surplus;
    without it only leases of gone holders are released.

    Returns one line per release ("ml-training: 2 slots, no lease").
    """
    from prefect.settings import get_current_settings

    if get_current_settings().server.concurrency.lease_storage != FILE_LEASE_STORAGE:
        return []
    folder = lease_dir(settings)
    if not folder.is_dir():
        return []
    now = now or datetime.now(UTC)
    freed: list[str] = []
    # expired leases count as held: the repossessor frees them (freeing them here too
    # would free their slots twice)
    leases = file_leases(folder)
    for limit in client.read_global_concurrency_limits(limit=200):
        mine = [doc for doc in leases if str(limit.id) in doc.get("resource_ids", [])]
        leased = 0
        for doc in mine:
            meta = doc.get("metadata") or {}
            if _holder_gone(client, meta.get("holder")):
                client.release_concurrency_slots_with_lease(UUID(doc["id"]))
                freed.append(f"{limit.name}: {meta.get('slots', 1)} slots, holder gone")
                continue
            leased += int(meta.get("slots", 1))
        surplus = limit.active_slots - leased
        if surplus_seen is None:
            continue
        if surplus <= 0:
            surplus_seen.pop(limit.name, None)
            continue
        first = surplus_seen.setdefault(limit.name, (now, surplus))
        if (now - first[0]).total_seconds() < SURPLUS_CONFIRM_S:
            continue
        slots = min(first[1], surplus)
        client.release_concurrency_slots(names=[limit.name], slots=slots, occupancy_seconds=0)
        surplus_seen.pop(limit.name, None)
        freed.append(f"{limit.name}: {slots} slots, no lease")
        log.warning("freed %d slots of %s that no lease holds", slots, limit.name)
    return freed
