"""Model versions' live figures for the registry views, read from the prediction ledger.

``score-predictions`` stores each scored model's live figures in ``model_live_scores``;
:func:`ledger_live_source` turns the newest of them into the registry's
:class:`~core.schemas.registry.LiveFigures` (what ``botai models list`` and
``GET /api/models`` show beside the held-out figures).
"""

from __future__ import annotations

from typing import Any

from core.schemas.live import ModelLiveScores
from core.schemas.registry import LiveFigures
from integrations.store import Store
from ml.registry_views import LiveSource


def live_figures_of(scores: ModelLiveScores) -> LiveFigures:
    """The registry's summary of one scoring run's figures for a model.

    The hit rate and the decay verdict are the decay rule's (its window of scored
    predictions); the standard error and the measured period come from the horizon with the
    most scored predictions.

    Returns:
        the summary; ``scored_predictions`` 0 when nothing was scored.
    """
    d = scores.decay
    best = max(scores.figures, key=lambda f: f.scored) if scores.figures else None
    extra: dict[str, Any] = {
        "scored_at": scores.created_at,
        "decayed": d.decayed,
        "decay_reasons": d.reasons,
        "majority_rate": d.majority_rate,
        "coverage": d.coverage,
        "coverage_standard_error": d.coverage_se,
        "brier": best.brier if best else None,
        "pnl_mean_pct": best.pnl_mean_pct if best else None,
        "pnl_standard_error_pct": best.pnl_se_pct if best else None,
    }
    return LiveFigures(
        scored_predictions=d.direction_scored,
        hit_rate=d.hit_rate if d.hit_rate is not None else (best.hit_rate if best else None),
        hit_rate_standard_error=best.hit_rate_se if best else None,
        measured_from=min((f.first_target for f in scores.figures), default=None),
        measured_to=max((f.last_target for f in scores.figures), default=None),
        **extra,
    )


def ledger_live_source(store: Store) -> LiveSource:
    """A live source reading the newest live figures of each model from ``store``.

    Returns:
        a function mapping model ids to their live figures (models never scored absent).
    """

    def read(model_ids: list[str]) -> dict[str, LiveFigures]:
        docs = store.ledger.live_scores_latest(model_ids)
        return {d["model_id"]: live_figures_of(ModelLiveScores.model_validate(d)) for d in docs}

    return read
