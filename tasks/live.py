"""The deployed models' live figures (from ``score-predictions``), for the flows that judge
models: ``llm-self-analysis`` and ``daily-performance-analysis`` read them beside the
held-out figures stored at training."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from core.schemas.live import LiveModelSummary, ModelLiveScores
from integrations.store import Store
from tasks.retry import retry_only_retryable


def _summary(doc: dict, scores: ModelLiveScores) -> LiveModelSummary:
    d = scores.decay
    own = [
        f
        for f in scores.figures
        if f.kind == "signal" or f.hour == int(doc.get("horizon_bars") or 1)
    ]
    best = max(own, key=lambda f: f.scored) if own else None
    return LiveModelSummary(
        model_id=scores.model_id,
        model_type=str(doc.get("model_type")),
        symbol=scores.symbol,
        timeframe=str(doc.get("timeframe")),
        scored_at=scores.created_at,
        direction_scored=d.direction_scored,
        hit_rate=d.hit_rate if d.hit_rate is not None else (best and best.hit_rate),
        hit_rate_ucb=d.hit_rate_ucb,
        majority_rate=d.majority_rate
        if d.majority_rate is not None
        else (best and best.majority_rate),
        coverage=d.coverage,
        coverage_se=d.coverage_se,
        pnl_mean_pct=best and best.pnl_mean_pct,
        pnl_se_pct=best and best.pnl_se_pct,
        decayed=d.decayed,
        reasons=d.reasons,
    )


@task(
    name="deployed-live-figures",
    retries=3,
    retry_delay_seconds=exponential_backoff(2),
    retry_condition_fn=retry_only_retryable,
    cache_policy=NONE,
)
def deployed_live_figures(store: Store, timeframe: str | None = None) -> list[LiveModelSummary]:
    """The newest live record of every deployed model (of ``timeframe``) that has one.

    Returns:
        one summary per deployed model with scored predictions, by model id; models never
        scored are absent.

    Raises:
        StoreUnavailableError (retried): MongoDB unreachable.
    """
    docs = {d["model_id"]: d for d in store.deployed_model_docs(timeframe=timeframe)}
    if not docs:
        return []
    latest = store.ledger.live_scores_latest(sorted(docs))
    return [_summary(docs[s["model_id"]], ModelLiveScores.model_validate(s)) for s in latest]
