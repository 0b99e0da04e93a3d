"""Live figures of deployed models for Prometheus: what ``score-predictions`` last measured on
their served predictions (the prediction ledger), beside the held-out figures of
:mod:`deployments.metrics`.

Labels: ``model_type``, ``symbol``, ``timeframe`` (the deployed key) and ``model_id``.
"""

from __future__ import annotations

from datetime import datetime

from prometheus_client.core import Metric

from deployments.metrics_prefect import aware, gauge
from integrations.store import Store


def live_model_metrics(store: Store, now: datetime) -> list[Metric]:
    """``botai_model_live_*`` gauges and ``botai_model_decayed`` (1 while the decay rule
    fires) of every deployed model with a live record.

    Raises:
        StoreUnavailableError, StoreError: the store did not answer or refused a read.
    """
    from tasks.live import deployed_live_figures

    key = ["model_type", "symbol", "timeframe", "model_id"]
    families = {
        "hit_rate": gauge(
            "botai_model_live_hit_rate",
            "Share of the deployed model's live direction predictions (at its own horizon, "
            "newest window of the decay rule) that were right.",
            key,
        ),
        "majority_rate": gauge(
            "botai_model_live_majority_rate",
            "Naive baseline of botai_model_live_hit_rate: the share of the more frequent "
            "realised direction over the same predictions.",
            key,
        ),
        "hit_rate_ucb": gauge(
            "botai_model_live_hit_rate_upper_bound",
            "One-sided 95 % upper confidence bound of botai_model_live_hit_rate.",
            key,
        ),
        "coverage": gauge(
            "botai_model_live_interval_coverage",
            "Share of realised prices inside the served 80 % intervals, last 7 days.",
            key,
        ),
        "direction_scored": gauge(
            "botai_model_live_scored",
            "Scored live direction predictions behind botai_model_live_hit_rate.",
            key,
        ),
        "pnl_mean_pct": gauge(
            "botai_model_live_pnl_per_trade_pct",
            "Mean return per trade of the model's live signals after fees, percent.",
            key,
        ),
    }
    decayed = gauge(
        "botai_model_decayed",
        "1 while the decay rule fires on the deployed model's live predictions.",
        key,
    )
    age = gauge(
        "botai_model_live_scored_age_seconds",
        "Seconds since score-predictions last judged the model.",
        key,
    )
    for m in deployed_live_figures.fn(store):
        labels = [m.model_type, m.symbol, m.timeframe, m.model_id]
        for field, family in families.items():
            value = getattr(m, field)
            if value is not None:
                family.add_metric(labels, float(value))
        decayed.add_metric(labels, float(m.decayed))
        age.add_metric(labels, max(0.0, (now - aware(m.scored_at)).total_seconds()))
    return [*families.values(), decayed, age]
