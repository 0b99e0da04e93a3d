"""Job records and results: ``training_jobs``, ``backtest_results``, ``optimization_results``
and ``task_results``.

One document per task (flow run) id, unique on ``task_id`` and written with an upsert, so a
retried write or a re-run of the same flow run replaces the document instead of adding one.
Each document carries ``expires_at`` (see :class:`~integrations.store.schema.Retention`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from integrations.store.base import Repository
from integrations.store.schema import C


class Jobs(Repository):
    """Job records and results, keyed by task id."""

    def _save(self, name: str, doc: Mapping[str, Any], what: str, *, retry: bool = True) -> None:
        if not doc.get("task_id"):
            raise ValueError(f"a {name} document needs a task_id")
        self.upsert(name, {"task_id": doc["task_id"]}, doc, what, retry=retry)

    def training_job_save(self, doc: Mapping[str, Any]) -> None:
        """Write the whole ``training_jobs`` document of ``doc["task_id"]`` (insert or replace).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self._save(C.TRAINING_JOBS, doc, "saving a training job")

    def training_job_get(self, task_id: str) -> dict[str, Any] | None:
        """The ``training_jobs`` document of ``task_id`` (without ``_id``), or None."""
        return self.find_one(C.TRAINING_JOBS, {"task_id": task_id}, "reading a training job")

    def backtest_result_save(self, doc: Mapping[str, Any]) -> None:
        """Write the ``backtest_results`` document of ``doc["task_id"]`` (insert or replace).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self._save(C.BACKTEST_RESULTS, doc, "saving a backtest")

    def backtest_result_get(self, task_id: str) -> dict[str, Any] | None:
        """The ``backtest_results`` document of ``task_id`` (without ``_id``), or None."""
        return self.find_one(C.BACKTEST_RESULTS, {"task_id": task_id}, "reading a backtest")

    def optimization_result_save(self, doc: Mapping[str, Any]) -> None:
        """Write the ``optimization_results`` document of ``doc["task_id"]`` (insert or replace).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self._save(C.OPTIMIZATION_RESULTS, doc, "saving an optimisation")

    def optimization_result_get(self, task_id: str) -> dict[str, Any] | None:
        """The ``optimization_results`` document of ``task_id`` (without ``_id``), or None."""
        return self.find_one(
            C.OPTIMIZATION_RESULTS, {"task_id": task_id}, "reading an optimisation"
        )

    def task_result_save(self, doc: Mapping[str, Any], *, retry: bool = True) -> None:
        """Write the ``task_results`` document of ``doc["task_id"]`` (insert or replace),
        expiring ``saved_at`` plus the collection's retention.

        Args:
            retry: False makes one attempt (a health check must not wait out a store that
                is down).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget, if any).
            StoreError: the store refused the document.
        """
        self._save(C.TASK_RESULTS, doc, "saving a task result", retry=retry)

    def task_result_get(self, task_id: str) -> dict[str, Any] | None:
        """The ``task_results`` document of ``task_id`` (without ``_id``), or None."""
        return self.find_one(C.TASK_RESULTS, {"task_id": task_id}, "reading a task result")

    def result_get(self, collection: str, task_id: str) -> dict[str, Any] | None:
        """The document of ``task_id`` in the result collection ``collection``, or None."""
        return self.find_one(collection, {"task_id": task_id}, f"reading {collection}")

    def records_in_status(self, collection: str, statuses: Sequence[str]) -> list[dict[str, Any]]:
        """Documents of the job-record collection ``collection`` (``training_jobs`` or
        ``task_results``) whose ``status`` is one of ``statuses`` (without ``_id``)."""
        return self.find(
            collection, {"status": {"$in": list(statuses)}}, f"reading open {collection}"
        )

    def record_save(self, collection: str, doc: Mapping[str, Any]) -> None:
        """Write the whole document of ``doc["task_id"]`` in the job-record or result
        collection ``collection`` (insert or replace).

        Raises:
            ValueError: no ``task_id``.
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        self._save(collection, doc, f"saving {collection}")
