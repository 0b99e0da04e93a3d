"""Monitoring: health reports and state, alerts, portfolio and API-cost reports, trades.

Whole documents only (``insert_one`` / ``replace_one``): see the nx-27017 notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING

from integrations.store.base import Repository
from integrations.store.schema import C


class Monitoring(Repository):
    """``health_reports``, ``health_state``, ``alerts``, ``portfolio_reports``,
    ``api_cost_history`` and ``trades``."""

    def health_report_save(self, doc: Mapping[str, Any], *, keep_days: float | None = None) -> None:
        """Insert one ``health_reports`` document.

        Args:
            keep_days: retention of this report; default: the store's retention of
                ``health_reports`` (30 days unless configured).

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        body = dict(doc)
        created = body.setdefault("created_at", datetime.now(UTC))
        if keep_days is not None:
            body["expires_at"] = created + timedelta(days=keep_days)
        self.insert(C.HEALTH_REPORTS, body, "saving a health report")

    def health_reports_latest(self, limit: int = 10) -> list[dict[str, Any]]:
        """The newest ``health_reports`` documents (without ``_id``), newest first."""
        return self.find(
            C.HEALTH_REPORTS,
            {},
            "reading health reports",
            sort=[("created_at", DESCENDING)],
            limit=limit,
        )

    def health_state_all(self) -> dict[str, dict[str, Any]]:
        """Every service's health state ``{service: {consecutive_failures, last_status}}``.

        Raises:
            StoreUnavailableError: MongoDB unreachable (after the retry budget).
        """
        docs = self.find(C.HEALTH_STATE, {}, "reading health state")
        return {d["service"]: d for d in docs}

    def health_state_save(self, service: str, state: Mapping[str, Any]) -> None:
        """Write the whole ``health_state`` document of ``service`` (insert or replace)."""
        doc = {**state, "service": service}
        self.upsert(C.HEALTH_STATE, {"service": service}, doc, "saving health state")

    def alert_record(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``alerts`` document: fingerprint, created_at, level, title, message,
        urgent, suppressed, attempted, delivered, failed (channel -> reason), sent."""
        self.insert(C.ALERTS, doc, "recording an alert")

    def alert_last_sent(self, fingerprint: str) -> datetime | None:
        """When the alert ``fingerprint`` was last delivered on some channel, or None."""
        doc = self.call(
            "reading alerts",
            lambda: self.col(C.ALERTS).find_one(
                {"fingerprint": fingerprint, "sent": True},
                {"created_at": 1},
                sort=[("created_at", DESCENDING)],
            ),
        )
        return doc["created_at"] if doc else None

    def alerts_find(self, query: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """``alerts`` documents matching ``query`` (without ``_id``), oldest first."""
        return self.find(C.ALERTS, query, "reading alerts", sort=[("created_at", ASCENDING)])

    def portfolio_report_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``portfolio_reports`` document (keyed by ``report_date``, YYYY-MM-DD)."""
        self.insert(C.PORTFOLIO_REPORTS, doc, "saving a portfolio report")

    def portfolio_reports_find(self, report_date: str) -> list[dict[str, Any]]:
        """``portfolio_reports`` of ``report_date`` (without ``_id``)."""
        return self.find(
            C.PORTFOLIO_REPORTS, {"report_date": report_date}, "reading portfolio reports"
        )

    def api_cost_report_save(self, doc: Mapping[str, Any]) -> None:
        """Insert one ``api_cost_history`` document (keyed by ``report_date``; never expires)."""
        self.insert(C.API_COST_HISTORY, doc, "saving a cost report")

    def api_cost_reports_find(self, report_date: str) -> list[dict[str, Any]]:
        """``api_cost_history`` documents of ``report_date`` (without ``_id``)."""
        return self.find(C.API_COST_HISTORY, {"report_date": report_date}, "reading cost reports")

    def trades_closed_between(self, start: datetime, end: datetime) -> list[dict[str, Any]]:
        """``trades`` documents with ``start <= closed_at < end`` (without ``_id``), oldest first."""
        return self.find(
            C.TRADES,
            {"closed_at": {"$gte": start, "$lt": end}},
            "reading trades",
            sort=[("closed_at", ASCENDING)],
        )
