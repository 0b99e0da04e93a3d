"""Platform metrics for Prometheus, computed from the real data at scrape time.

:class:`PlatformCollector` (a ``prometheus_client`` collector) reads, on every scrape:

* **Prefect** (``deployments.metrics_prefect.read_prefect``): the runs of the work pool
  that are due or in progress by deployment and state (``botai_flow_runs``), the runs that ended within
  ``metrics_window_s`` by final state (``botai_flow_runs_ended``), their request -> Running
  and request -> Completed times (``botai_run_start_seconds``,
  ``botai_run_complete_seconds``: gauge histograms of the runs that ended in the window),
  the resubmissions by the recovery service (``botai_recoveries``), per work queue the
  waiting runs and the oldest's wait (``tasks.queue_health``, the same reading the
  supervisor alerts on) and the live workers;
* **the store** (:func:`read_store`): dead letters waiting for an admin, the LLM cost
  ledger (today, month to date, the month's projection, the kill switch) and the held-out
  figures of every deployed model (the registry's pointers).

"Request" is the later of the run's creation and its due time (a gateway or UI run is due
when created; a cron run is created ahead and due at its slot). Runs executed more than once
(re-run by crash recovery or a flow retry) are left out of the two histograms: their start
time is their first attempt's.

Each source runs in its own thread and must finish within ``metrics_timeout_s``: a slow or
dead source never hangs a scrape; its metrics are left out and ``botai_scrape_errors{source}``
is 1 (the error is logged). The thresholds the alert rules compare with are exported too
(``botai_*_threshold*``), so ``config/prometheus/alerts.yml`` follows the settings.

Live figures of deployed models (their served predictions scored by ``score-predictions``) come
from :mod:`deployments.metrics_live` (``botai_model_live_*``, ``botai_model_decayed``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime, timedelta

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from core.settings import Settings
from deployments.metrics_prefect import aware, gauge, read_prefect
from integrations.store import Store

log = logging.getLogger(__name__)


def read_store(store: Store, settings: Settings, now: datetime | None = None) -> list[Metric]:
    """The store side of the metrics: dead letters, LLM cost, deployed models.

    Returns the metric families (see the module docstring).

    Raises:
        StoreUnavailableError, StoreError: the store did not answer or refused a read.
    """
    from integrations.reports import cost_report

    now = now or datetime.now(UTC)
    letters = gauge(
        "botai_dead_letters",
        "Runs that used every recovery attempt and wait for an admin (not re-queued).",
        ["deployment"],
    )
    waiting = store.dead_letters.dead_letters_list(limit=settings.metrics_max_runs)
    names = Counter(
        str(d.get("deployment") or d.get("flow_name") or "(none)").rpartition("/")[2]
        for d in waiting
    )  # "flow/deployment" in the document; the label is the deployment, as in Prefect's
    for dep, n in sorted(names.items()):
        letters.add_metric([dep], n)

    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    until = now + timedelta(seconds=2)  # ranges are exact to the second on nx-27017
    month = store.improvement.llm_costs_between(day.replace(day=1), until)
    today = [e for e in month if aware(e.get("created_at")) and aware(e["created_at"]) >= day]
    report = cost_report(
        today,
        month,
        now.date(),
        daily_warning_usd=settings.cost_daily_warning_usd,
        daily_critical_usd=settings.cost_daily_critical_usd,
        monthly_critical_usd=settings.cost_monthly_critical_usd,
    )
    cost = [
        ("botai_llm_cost_today_usd", "LLM cost of the UTC day so far, USD.", report.daily_cost_usd),
        (
            "botai_llm_cost_month_usd",
            "LLM cost of the month so far, USD.",
            report.month_to_date_usd,
        ),
        (
            "botai_llm_cost_month_projection_usd",
            "Month to date / days elapsed x days in the month, USD.",
            report.monthly_projection_usd,
        ),
        ("botai_llm_calls_today", "LLM calls recorded in the ledger today.", report.calls),
        (
            "botai_llm_enabled",
            "1 while the LLM kill switch is on (LLM calls allowed).",
            float(store.improvement.llm_enabled()),
        ),
    ]
    families: list[Metric] = [letters]
    for metric, doc, value in cost:
        family = gauge(metric, doc)
        family.add_metric([], value)
        families.append(family)
    from deployments.metrics_live import live_model_metrics

    return [*families, *_model_metrics(store, now), *live_model_metrics(store, now)]


def _model_metrics(store: Store, now: datetime) -> list[Metric]:
    """Held-out figures of every deployed model (the registry's pointers)."""
    from ml.deploy_rule import BASELINES
    from ml.metrics import selection_accuracy

    key = ["model_type", "symbol", "timeframe"]
    accuracy = gauge(
        "botai_model_accuracy",
        "Accuracy of the deployed model's direction predictions on bars it was not fitted on, "
        "measured at training (split: holdout, or validation for models recorded before "
        "hold-out figures existed).",
        [*key, "split"],
    )
    baseline = gauge(
        "botai_model_baseline_accuracy",
        "Accuracy of a naive baseline on the same bars as botai_model_accuracy.",
        [*key, "split", "baseline"],
    )
    samples = gauge(
        "botai_model_eval_samples", "Bars botai_model_accuracy was measured on.", [*key, "split"]
    )
    version = gauge("botai_model_deployed_version", "Version of the deployed model.", key)
    age = gauge("botai_model_age_seconds", "Seconds since the deployed model was trained.", key)
    for doc in store.models.deployed_model_docs():
        labels = [str(doc.get(k)) for k in key]
        metrics = doc.get("metrics") or {}
        holdout = metrics.get("holdout") if isinstance(metrics.get("holdout"), dict) else {}
        if metrics.get("holdout_accuracy") is not None:
            split, n = "holdout", holdout.get("holdout_samples")
            rows = {
                c.get("name"): c.get("accuracy")
                for c in holdout.get("comparisons") or []
                if isinstance(c, dict) and c.get("name") in BASELINES
            }
        else:
            split, n = "validation", metrics.get("validation_samples")
            rows = {
                name: figures.get("accuracy")
                for name, figures in (metrics.get("baselines") or {}).items()
                if isinstance(figures, dict)
            }
        if split == "holdout" or metrics.get("val_accuracy") is not None:
            accuracy.add_metric([*labels, split], selection_accuracy(metrics))
        for name, value in sorted(rows.items()):
            if value is not None:
                baseline.add_metric([*labels, split, str(name)], float(value))
        if n is not None:
            samples.add_metric([*labels, split], float(n))
        if doc.get("version") is not None:
            version.add_metric(labels, float(doc["version"]))
        created = doc.get("created_at")
        if isinstance(created, datetime):
            age.add_metric(labels, max(0.0, (now - aware(created)).total_seconds()))
    return [accuracy, baseline, samples, version, age]


def threshold_metrics(settings: Settings) -> list[Metric]:
    """The settings the alert rules compare with, as gauges."""
    values = [
        ("botai_queue_max_wait_threshold_seconds", "queue_max_wait_s", settings.queue_max_wait_s),
        ("botai_queue_max_depth_threshold", "queue_max_depth", settings.queue_max_depth),
        (
            "botai_llm_cost_daily_critical_threshold_usd",
            "cost_daily_critical_usd",
            settings.cost_daily_critical_usd,
        ),
        (
            "botai_llm_cost_monthly_critical_threshold_usd",
            "cost_monthly_critical_usd",
            settings.cost_monthly_critical_usd,
        ),
        (
            "botai_model_min_accuracy_threshold",
            "self_analysis_min_accuracy",
            settings.self_analysis_min_accuracy,
        ),
    ]
    out: list[Metric] = []
    for metric, field, value in values:
        family = gauge(metric, f"The platform setting {field} (alert threshold).")
        family.add_metric([], float(value))
        out.append(family)
    return out


class PlatformCollector(Collector):
    """Prometheus collector of the platform's metrics (see the module docstring).

    Args:
        settings: the platform settings (Prefect API, work pool, thresholds, timeouts).
        store_factory: returns the platform store (called in the store thread; its errors
            count as store errors), or None to leave the store's metrics out.
    """

    def __init__(self, settings: Settings, store_factory: Callable[[], Store] | None) -> None:
        self.settings = settings
        self.store_factory = store_factory
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="botai-metrics")
        self._busy: dict[str, Future] = {}
        self._lock = threading.Lock()

    def describe(self) -> list[Metric]:
        """Nothing: the families depend on the data (registration must not scrape)."""
        return []

    def _prefect(self) -> tuple[list[Metric], float]:
        from tasks.queue_health import quick_client

        started = time.monotonic()
        with quick_client(self.settings, self.settings.metrics_timeout_s) as client:
            return read_prefect(client, self.settings), time.monotonic() - started

    def _store(self) -> tuple[list[Metric], float]:
        assert self.store_factory is not None
        started = time.monotonic()
        families = read_store(self.store_factory(), self.settings)
        return families, time.monotonic() - started

    def collect(self) -> Iterator[Metric]:
        """Read every source within ``metrics_timeout_s`` and yield what was read, with
        ``botai_scrape_errors`` and ``botai_scrape_duration_seconds`` per source."""
        sources: dict[str, Callable[[], tuple[list[Metric], float]]] = {"prefect": self._prefect}
        if self.store_factory is not None:
            sources["store"] = self._store
        started = time.monotonic()
        futures: dict[str, Future] = {}
        with self._lock:
            for source, read in sources.items():
                previous = self._busy.get(source)
                if previous is not None and not previous.done():
                    futures[source] = previous  # still hung: never pile up reads
                    continue
                futures[source] = self._busy[source] = self._pool.submit(read)
        errors = gauge(
            "botai_scrape_errors",
            "1 when the source failed or did not answer within metrics_timeout_s at this "
            "scrape (its metrics are then missing).",
            ["source"],
        )
        duration = gauge(
            "botai_scrape_duration_seconds",
            "Seconds reading the source took (sources that answered).",
            ["source"],
        )
        deadline = started + self.settings.metrics_timeout_s
        for source, future in futures.items():
            try:
                families, took_s = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                log.warning(
                    "metrics: %s did not answer within %gs", source, self.settings.metrics_timeout_s
                )
                errors.add_metric([source], 1.0)
                continue
            except Exception as e:  # the source is down or refused: reported, never raised
                log.warning("metrics: reading %s failed: %s: %s", source, type(e).__name__, e)
                errors.add_metric([source], 1.0)
                continue
            errors.add_metric([source], 0.0)
            duration.add_metric([source], took_s)
            yield from families
        yield from threshold_metrics(self.settings)
        yield errors
        yield duration

    def close(self) -> None:
        """Stop the reader threads (reads in flight finish on their own timeouts)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
