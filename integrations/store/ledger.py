"""The prediction ledger (``prediction_ledger``) and models' live figures (``model_live_scores``).

``prediction_ledger`` holds one document per served prediction and horizon: a predict-price
forecast of 24 hours is 24 entries (price, 80 % interval, P(direction) of each hour), a
bulk-analysis signal one entry (P(up) over the model's horizon). Each entry has a unique
``entry_id`` built from the run that served it, so writing a run's entries again (a retried
task, a re-run) adds nothing. The scoring flow reads unscored entries whose ``target_time``
has passed (index ``scored_target``) and replaces each whole document with its scored copy
under the filter ``{entry_id, scored: False}``: an entry is scored once, whichever run gets
there first.

Whole documents only (``insert_many`` / ``replace_one``): see the nx-27017 notes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.errors import BulkWriteError

from integrations.store.base import Repository
from integrations.store.schema import C


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

    def entry_mark_scored(self, entry: Mapping[str, Any]) -> bool:
        """Replace the unscored entry ``entry["entry_id"]`` by ``entry`` (its scored copy).

        Returns:
            True when this call scored it; False when it was scored already (another run).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        body = self.stamped(C.PREDICTION_LEDGER, entry)
        body.pop("_id", None)
        flt = {"entry_id": body["entry_id"], "scored": False}
        result = self.call(
            "scoring a ledger entry",
            lambda: self.col(C.PREDICTION_LEDGER).replace_one(flt, body),
        )
        return result.modified_count == 1 or result.matched_count == 1

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
