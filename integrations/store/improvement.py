"""Self-improvement: the LLM cost ledger and kill switch, LLM analyses, retrain history,
strategy state (the audit of disables) and named locks.

The cost ledger (``llm_costs``) and ``strategy_state`` never expire; analyses and retrain
history are job records and do. Whole documents only: see the nx-27017 notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import DuplicateKeyError

from integrations.store.base import Repository
from integrations.store.candles import group_datetime
from integrations.store.schema import C


class SelfImprovement(Repository):
    """``llm_costs``, ``llm_settings``, ``llm_analysis_history``, ``retrain_history``,
    ``strategy_state`` and ``locks``."""

    def record_llm_cost(
        self,
        *,
        run_id: str | None,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        cost_usd: float,
        created_at: datetime | None = None,
        purpose: str | None = None,
    ) -> None:
        """Append one LLM call to the ``llm_costs`` ledger (exactly once, retries included).

        Document: ``{created_at (UTC), run_id, model, prompt_tokens, completion_tokens,
        cost_usd, purpose}``. Every LLM call writes one; the cost report sums them.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        doc = {
            "created_at": created_at or datetime.now(UTC),
            "run_id": run_id,
            "model": model,
            "prompt_tokens": int(prompt_tokens),
            "completion_tokens": int(completion_tokens),
            "cost_usd": float(cost_usd),
            "purpose": purpose,
        }
        self.insert(C.LLM_COSTS, doc, "recording an LLM cost")

    def llm_costs_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """``llm_costs`` documents with ``start <= created_at < end`` (without ``_id``), oldest first.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        return self.find(
            C.LLM_COSTS,
            {"created_at": {"$gte": start, "$lt": end}},
            "reading LLM costs",
            sort=[("created_at", ASCENDING)],
        )

    def set_llm_enabled(self, enabled: bool, reason: str, by: str) -> None:
        """Switch the LLM on or off (the kill switch in ``llm_settings``, document ``_id="llm"``).

        Writes the whole document ``{_id, enabled, reason, by, updated_at}``.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        doc = {
            "_id": "llm",
            "enabled": bool(enabled),
            "reason": reason,
            "by": by,
            "updated_at": datetime.now(UTC),
        }
        self.call(
            "switching the LLM",
            lambda: self.col(C.LLM_SETTINGS).replace_one({"_id": "llm"}, doc, upsert=True),
        )

    def llm_settings(self) -> dict[str, Any]:
        """The kill-switch document (``enabled`` True when never set)."""
        doc = self.call(
            "reading LLM settings", lambda: self.col(C.LLM_SETTINGS).find_one({"_id": "llm"})
        )
        return doc or {"_id": "llm", "enabled": True, "reason": None, "by": None}

    def llm_enabled(self) -> bool:
        """True unless the kill switch is off. The LLM client checks this before every call.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        return bool(self.llm_settings().get("enabled", True))

    def _save_by_task(self, name: str, doc: Mapping[str, Any], what: str) -> None:
        if doc.get("task_id"):  # a re-run of the same task replaces its record
            self.upsert(name, {"task_id": doc["task_id"]}, doc, what)
        else:
            self.insert(name, doc, what)

    def llm_analysis_save(self, doc: Mapping[str, Any]) -> None:
        """Write the ``llm_analysis_history`` document of ``doc["task_id"]`` (insert or replace).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self._save_by_task(C.LLM_ANALYSIS_HISTORY, doc, "saving an analysis")

    def llm_analyses_find(self, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """``llm_analysis_history`` documents matching ``query`` (without ``_id``), oldest first."""
        return self.find(
            C.LLM_ANALYSIS_HISTORY, query, "reading analyses", sort=[("created_at", ASCENDING)]
        )

    def retrain_history_save(self, doc: Mapping[str, Any]) -> None:
        """Write the ``retrain_history`` document of ``doc["task_id"]`` (insert or replace).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self._save_by_task(C.RETRAIN_HISTORY, doc, "saving a retrain")

    def retrain_history_find(self, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """``retrain_history`` documents matching ``query`` (without ``_id``), oldest first."""
        return self.find(
            C.RETRAIN_HISTORY, query, "reading retrain history", sort=[("created_at", ASCENDING)]
        )

    def strategy_state_get(self, strategy: str) -> dict[str, Any] | None:
        """The ``strategy_state`` document of ``strategy`` (without ``_id``), or None."""
        return self.find_one(C.STRATEGY_STATE, {"strategy": strategy}, "reading strategy state")

    def strategy_state_save(self, doc: Mapping[str, Any]) -> None:
        """Write the whole ``strategy_state`` document of ``doc["strategy"]`` (insert or replace).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self.upsert(C.STRATEGY_STATE, {"strategy": doc["strategy"]}, doc, "saving strategy state")

    def lock_acquire(
        self, name: str, owner: str, ttl_s: float, *, note: str = ""
    ) -> dict[str, Any] | None:
        """Take the lock ``name`` for ``owner`` (document ``_id=name`` in ``locks``).

        A lock older than ``ttl_s`` is considered abandoned and taken over. Repeating the call
        (a retry) is harmless: the owner's own lock counts as acquired.

        Returns:
            None when acquired; the holder's document ``{_id, owner, acquired_at, note}`` when
            another owner holds it.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        col = self.col(C.LOCKS)

        def attempt() -> dict[str, Any] | None:
            now = datetime.now(UTC)
            doc = {"_id": name, "owner": owner, "acquired_at": now, "note": note}
            for _ in range(3):  # the holder may release between our insert and our read
                try:
                    col.insert_one(dict(doc))
                    return None
                except DuplicateKeyError:
                    held = col.find_one({"_id": name})
                if held is None:
                    continue
                acquired = group_datetime(held.get("acquired_at"))
                age_s = (now - acquired).total_seconds() if acquired else float("inf")
                if held.get("owner") == owner or age_s > ttl_s:
                    res = col.replace_one({"_id": name, "owner": held.get("owner")}, doc)
                    return None if res.matched_count else col.find_one({"_id": name})
                return held
            return col.find_one({"_id": name})

        return self.call(f"locking {name}", attempt)

    def lock_release(self, name: str, owner: str) -> None:
        """Release the lock ``name`` if ``owner`` holds it."""
        self.call("unlocking", lambda: self.col(C.LOCKS).delete_one({"_id": name, "owner": owner}))
