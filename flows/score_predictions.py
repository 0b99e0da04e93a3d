"""``score-predictions`` (hourly): score served predictions whose outcomes have arrived.

Steps: unscored ledger entries whose target candle has closed and is stored -> scored once
each (tasks.scoring.score_due_entries: an entry another run scored first is left alone, so
the run is safe to repeat) -> every model with scored entries: live figures (ml.scoring) and
the decay rule (ml.decay), stored in ``model_live_scores`` -> an alert per decayed model ->
a markdown artifact with each model's figures and chart.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from core.schemas.live import ScorePredictionsParams, ScorePredictionsResult
from tasks.notify import build_notifier, send_notification
from tasks.results import save_task_result
from tasks.scoring import judge_models, publish_live_scores, score_due_entries


@flow(name="score-predictions", validate_parameters=True, timeout_seconds=1800)
def score_predictions(
    params: ScorePredictionsParams = ScorePredictionsParams(),  # noqa: B008
) -> ScorePredictionsResult:
    """Score the ledger and judge the models. Returns a :class:`ScorePredictionsResult`.

    Raises:
        StoreUnavailableError: MongoDB unreachable (after the tasks' retries).
    """
    from blocks.loader import load_store

    started = time.perf_counter()
    logger = get_run_logger()
    now = datetime.now(UTC)
    store = load_store()
    counts = score_due_entries(store, now, params.fee_pct, params.max_entries)
    judged = judge_models(store, now, params, now - timedelta(days=90))
    decayed = [s for s, _ in judged if s.decay.decayed]
    if decayed:
        notifier = build_notifier(store)
        for s in decayed:
            send_notification(
                notifier,
                "warning",
                f"Model {s.model_id} ({s.symbol}) has decayed",
                "; ".join(s.decay.reasons)
                + ". Its live figures are on the score-predictions run; consider retraining "
                "or rolling back.",
                dedupe_key=f"model-decayed-{s.model_id}",
            )
    publish_live_scores(judged, counts)
    logger.info(
        "scored %d of %d due predictions (%d waiting); %d models judged, %d decayed",
        counts["scored"],
        counts["due"],
        counts["waiting"],
        len(judged),
        len(decayed),
    )
    result = ScorePredictionsResult(
        due=counts["due"],
        scored=counts["scored"],
        waiting=counts["waiting"],
        already_scored=counts["already_scored"],
        models=[s for s, _ in judged],
        decayed=[s.model_id for s in decayed],
        task_id=str(flow_run.get_id()),
        elapsed_s=time.perf_counter() - started,
    )
    return save_task_result(result, store)
