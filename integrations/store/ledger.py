"""The prediction ledger (``prediction_ledger``) and models' live figures (``model_live_scores``).

``prediction_ledger`` holds one document per served prediction and horizon: a predict-price
forecast of 24 hours is 24 entries (price, 80 % interval, P(direction) of each hour), a
bulk-analysis signal one entry (P(up) over the model's horizon). Each entry has a unique
``entry_id`` built from the run that served it, so writing a run's entries again (a retried
task, a re-run) adds nothing. The scoring flow reads unscored entries whose ``target_time``
has passed (index ``scored_target``) and replaces each whole document with its scored copy
under the filter ``{_id, scored: False}``: an entry is scored once, whichever run gets there
first.

Marking scored is batched (:meth:`PredictionLedger.entries_mark_scored`): per chunk of
:data:`MARK_CHUNK` entries, one ``$in`` read of their ``_id`` and one ``bulk_write`` of
``ReplaceOne``. On nx-27017 an equality on ``entry_id`` costs a pass over the collection
despite its unique index (30-80 ms per entry at 20,000 entries), while a replace by
``_id`` stays under a millisecond; one ``$in`` read is one pass for the whole chunk.

Whole documents only (``insert_many`` / ``replace_one``): see the nx-27017 notes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReplaceOne
from pymongo.errors import BulkWriteError

from integrations.store.base import Repository
from integrations.store.schema import C

#: Entries marked scored per store call (one ``$in`` read and one ``bulk_write``): a retry
#: redoes one chunk, and the ``$in`` list and the batch stay well under the message limits.
MARK_CHUNK = 2_000


class PredictionLedger(Repository):
    """``prediction_ledger`` entries and ``model_live_scores`` documents."""

    def entries_record(self, entries: Sequence[Mapping[str, Any]]) -> int:
        """Write ``entries`` (each with a unique ``entry_id``); those already written are
        left as they are, so the call is safe to repeat.

        Returns:
            how many entries were new.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
            StoreError: the store refused an entry (none of the caller's results may then
                be acknowledged).
        """
        if not entries:
            return 0
        bodies = [self.stamped(C.PREDICTION_LEDGER, e) for e in entries]
        ids = [b["entry_id"] for b in bodies]
        col = self.col(C.PREDICTION_LEDGER)

        def write() -> int:  # repeatable: starts by reading which entries exist
            have = {d["entry_id"] for d in col.find({"entry_id": {"$in": ids}}, {"entry_id": 1})}
            new = [dict(b) for b in bodies if b["entry_id"] not in have]
            if not new:
                return 0
            try:
                return len(col.insert_many(new, ordered=False).inserted_ids)
            except BulkWriteError as e:  # a concurrent writer got there first: fine
                written = col.count_documents({"entry_id": {"$in": ids}})
                if written < len(ids):  # refused (another unique key, a validator...): raise
                    raise
                return int(e.details.get("nInserted", 0))

        return self.call("recording predictions in the ledger", write)

    def entries_due(self, resolved_by: datetime, limit: int = 0) -> list[dict[str, Any]]:
        """Unscored entries whose ``target_time`` is at or before ``resolved_by``, oldest first
        (without ``_id``)."""
        return self.find(
            C.PREDICTION_LEDGER,
            {"scored": False, "target_time": {"$lte": resolved_by}},
            "reading due ledger entries",
            sort=[("target_time", ASCENDING)],
            limit=limit,
        )

    def entries_mark_scored(self, entries: Sequence[Mapping[str, Any]]) -> int:
        """Replace each entry of ``entries`` (scored copies, each with its ``entry_id``) that is
        still unscored in the ledger by its copy; entries scored already (by another run, or
        an earlier attempt of this one) and entries no longer in the ledger are left alone.

        Written per chunk of :data:`MARK_CHUNK`: one read of the chunk's unscored ``_id`` and
        one ``bulk_write`` of ``ReplaceOne({_id, scored: False}, copy)``. Each chunk is safe to
        repeat (the filter holds ``scored: False``), so it is retried on temporary errors, and
        a run that stops between chunks leaves the rest unscored for the next run: no entry is
        scored twice or lost.

        Returns:
            how many entries this call scored. An attempt whose answer was lost and that was
            retried counts the entries it wrote as scored already.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
            StoreError: the store refused a replacement (the chunk's others may be written).
        """
        col = self.col(C.PREDICTION_LEDGER)
        bodies = []
        for e in entries:
            body = self.stamped(C.PREDICTION_LEDGER, e)
            body.pop("_id", None)  # the stored document keeps its own
            bodies.append(body)
        scored = 0
        for at in range(0, len(bodies), MARK_CHUNK):
            chunk = bodies[at : at + MARK_CHUNK]

            def write(chunk: list[dict[str, Any]] = chunk) -> int:  # repeatable: reads first
                ids = [b["entry_id"] for b in chunk]
                unscored = {
                    d["entry_id"]: d["_id"]
                    for d in col.find({"entry_id": {"$in": ids}, "scored": False}, {"entry_id": 1})
                }
                ops = [
                    ReplaceOne({"_id": unscored[b["entry_id"]], "scored": False}, b)
                    for b in chunk
                    if b["entry_id"] in unscored
                ]
                return col.bulk_write(ops, ordered=False).matched_count if ops else 0

            scored += self.call("scoring ledger entries", write, idempotent=True)
        return scored

    def entries_find(
        self, query: Mapping[str, Any], *, newest_first: bool = False, limit: int = 0
    ) -> list[dict[str, Any]]:
        """Ledger entries matching ``query`` by ``target_time`` (without ``_id``)."""
        order = DESCENDING if newest_first else ASCENDING
        return self.find(
            C.PREDICTION_LEDGER,
            query,
            "reading the prediction ledger",
            sort=[("target_time", order)],
            limit=limit,
        )

    def scored_model_ids(self, since: datetime) -> list[str]:
        """Models with an entry scored at or after ``since`` (target time), sorted."""
        docs = self.call(
            "reading the prediction ledger",
            lambda: self.col(C.PREDICTION_LEDGER).distinct(
                "model_id", {"scored": True, "target_time": {"$gte": since}}
            ),
        )
        return sorted(str(d) for d in docs if d)

    def live_scores_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``model_live_scores`` document (a model's live figures at ``created_at``)."""
        self.insert(C.MODEL_LIVE_SCORES, doc, "saving a model's live figures")

    def live_scores_latest(self, model_ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The newest ``model_live_scores`` document of each model (of ``model_ids``, or all),
        sorted by model id (without ``_id``)."""
        query: dict[str, Any] = {} if model_ids is None else {"model_id": {"$in": list(model_ids)}}
        docs = self.find(
            C.MODEL_LIVE_SCORES,
            query,
            "reading models' live figures",
            sort=[("created_at", DESCENDING)],
        )
        latest: dict[str, dict[str, Any]] = {}
        for d in docs:
            latest.setdefault(d["model_id"], d)
        return [latest[k] for k in sorted(latest)]
