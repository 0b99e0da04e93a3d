"""The model registry's records: ``models`` and the ``deployed_models`` pointer.

``models`` holds one document per registered model, unique on ``model_id`` and on
(model_type, symbol, timeframe, version); models are never deleted (archived ones are kept).

``deployed_models`` holds one pointer per (model_type, symbol, timeframe), unique on that key:
``{model_type, symbol, timeframe, model_id, deployed_at, deployed_by}``. Deploying replaces
the pointer in one ``replace_one(upsert=True)``, so at every moment a key has exactly one
deployed model (or none before its first deploy). The ``status`` field of model documents
follows the pointer; the pointer is the truth.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pymongo import DESCENDING

from integrations.store.base import Repository
from integrations.store.schema import C

KEY_FIELDS = ("model_type", "symbol", "timeframe")


def model_key(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``{model_type, symbol, timeframe}`` of a model or pointer document."""
    return {k: doc[k] for k in KEY_FIELDS}


class Models(Repository):
    """Registered models and the deployed pointers."""

    def model_insert(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``models`` document (a registry record).

        Raises:
            DuplicateKeyStoreError: the ``model_id`` or the key's ``version`` is taken.
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self.insert(C.MODELS, doc, "registering a model")

    def model_replace(self, doc: Mapping[str, Any]) -> None:
        """Replace the ``models`` document with the same ``model_id`` by ``doc``."""
        body = {k: v for k, v in doc.items() if k != "_id"}
        self.call(
            "updating a model",
            lambda: self.col(C.MODELS).replace_one({"model_id": body["model_id"]}, body),
        )

    def model_get(self, model_id: str) -> dict[str, Any] | None:
        """The ``models`` document of ``model_id`` (without ``_id``), or None."""
        return self.find_one(C.MODELS, {"model_id": model_id}, "reading a model")

    def models_find(
        self,
        query: Mapping[str, Any],
        *,
        sort: list[tuple[str, int]] | None = None,
        limit: int = 0,
    ) -> list[dict[str, Any]]:
        """``models`` documents matching ``query`` (without ``_id``)."""
        return self.find(C.MODELS, query, "reading models", sort=sort, limit=limit)

    def model_trained_by(self, task_id: str) -> dict[str, Any] | None:
        """The ``models`` document the training run ``task_id`` registered (without ``_id``),
        or None."""
        return self.find_one(C.MODELS, {"training_task_id": task_id}, "reading a model")

    def model_next_version(self, model_type: str, symbol: str, timeframe: str) -> int:
        """1 + the highest registered version of the key (1 for its first model)."""
        key = {"model_type": model_type, "symbol": symbol, "timeframe": timeframe}
        top = self.models_find(key, sort=[("version", DESCENDING)], limit=1)
        return int(top[0]["version"]) + 1 if top else 1

    # ------------------------------------------------------------ the deployed pointer
    def deploy_pointer_set(self, doc: Mapping[str, Any], by: str, at: datetime) -> None:
        """Point the key of model ``doc`` at it: one atomic ``replace_one(upsert=True)``.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        key = model_key(doc)
        pointer = {**key, "model_id": doc["model_id"], "deployed_at": at, "deployed_by": by}
        self.upsert(C.DEPLOYED_MODELS, key, pointer, "deploying a model")

    def deploy_pointer_clear(self, doc: Mapping[str, Any]) -> bool:
        """Remove the pointer of ``doc``'s key if it points at ``doc``. Returns True if removed."""
        flt = {**model_key(doc), "model_id": doc["model_id"]}
        res = self.call("undeploying a model", lambda: self.col(C.DEPLOYED_MODELS).delete_one(flt))
        return bool(res.deleted_count)

    def deploy_pointers(self, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Pointer documents matching ``query`` (fields of the key), without ``_id``."""
        return self.find(C.DEPLOYED_MODELS, query, "reading deployed models")

    def deployed_model_docs(
        self,
        *,
        symbol: str | None = None,
        timeframe: str | None = None,
        model_type: str | None = None,
    ) -> list[dict[str, Any]]:
        """The ``models`` documents the pointers designate (one per deployed key).

        Use this rather than ``status == "deployed"`` queries: the pointer is the truth.
        """
        query = {
            k: v
            for k, v in (("symbol", symbol), ("timeframe", timeframe), ("model_type", model_type))
            if v is not None
        }
        ids = [p["model_id"] for p in self.deploy_pointers(query)]
        if not ids:
            return []
        return self.models_find({"model_id": {"$in": ids}})

    def backfill_pointers(self) -> int:
        """Create the pointer of every key that has a ``status == "deployed"`` model but no
        pointer (databases written before the pointer existed): the newest deployed model.

        Returns:
            how many pointers were created.
        """
        pointed = {tuple(model_key(p).values()) for p in self.deploy_pointers()}
        newest: dict[tuple[str, ...], dict[str, Any]] = {}
        for doc in self.models_find({"status": "deployed"}):
            key = tuple(model_key(doc).values())
            if key not in pointed and (key not in newest or _when(doc) > _when(newest[key])):
                newest[key] = doc
        for doc in newest.values():
            self.deploy_pointer_set(doc, doc.get("deployed_by") or "backfill", _when(doc))
        created = len(newest)
        return created


def _when(doc: Mapping[str, Any]) -> datetime:
    when = doc.get("deployed_at") or doc.get("created_at")
    return when if isinstance(when, datetime) else datetime.min.replace(tzinfo=UTC)
