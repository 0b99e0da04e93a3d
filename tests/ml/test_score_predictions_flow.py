"""predict-price records its forecast in the ledger (and draws its fan chart); the hourly
score-predictions flow scores only outcomes that arrived, once (TC-ASYNC-013, 020)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from core.environment import REPO_ROOT
from core.schemas.analysis import PredictPriceParams
from core.schemas.live import ScorePredictionsParams
from integrations.store import C, Store
from tests.ml.helpers import deploy_small_model, make_candles

SYMBOL = "LEDGUSDT"


def _artifacts(run_id: str) -> list:
    async def read() -> list:
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )

    return asyncio.run(read())


@pytest.mark.tc("TC-ASYNC-013", "TC-ASYNC-020")
def test_forecast_is_recorded_and_scored_once_when_its_outcomes_arrive(
    mongo_block: Store, model_store_block
) -> None:
    from deployments.metrics_live import live_model_metrics
    from flows.predict_price import predict_price
    from flows.score_predictions import score_predictions
    from ml import registry_ops
    from ml.registry_live import ledger_live_source
    from tasks.live import deployed_live_figures

    candles = make_candles(3306, seed=5)
    served, later = candles.iloc[1500:3300], candles.iloc[3300:]
    mongo_block.upsert_candles(SYMBOL, "1h", served, source="generated")
    record = deploy_small_model(
        mongo_block,
        Path(model_store_block.directory),
        model_store_block.get_key(),
        candles.iloc[:1500],  # trained strictly before the served hours
        symbol=SYMBOL,
        epochs=1,
    )

    result = predict_price(PredictPriceParams(symbol=SYMBOL, model_type="gru", horizon_hours=6))

    # the ledger holds every served hour before the result was acknowledged
    entries = mongo_block.ledger.entries_find({"task_id": result.task_id})
    assert [e["hour"] for e in entries] == [1, 2, 3, 4, 5, 6]
    for e, p in zip(entries, result.predictions, strict=True):
        assert e["target_time"] == result.origin_time + timedelta(hours=p.hour)
        assert e["target_time"] == later.index[p.hour - 1]
        assert (e["predicted_price"], e["lower"], e["upper"]) == (
            p.predicted_price,
            p.lower,
            p.upper,
        )
        assert e["confidence"] == p.confidence and 0.5 <= p.confidence <= 1.0
        assert e["model_id"] == record.model_id and e["model_version"] == record.version
        assert e["origin_price"] == result.last_price and e["scored"] is False
        assert e["expires_at"] - e["created_at"] == timedelta(days=90)
    # confidence is P(direction): the side the path is on, from the calibrated P(up)
    assert (result.predictions[0].predicted_price > result.last_price) == (
        result.calibrated_up_probability > 0.5
    )
    assert "outcomes" in result.confidence_calibration
    fan = [a for a in _artifacts(result.task_id) if a.key == f"price-forecast-{SYMBOL.lower()}"]
    assert fan and "data:image/png;base64," in fan[0].data and "80% interval" in fan[0].data

    params = ScorePredictionsParams(window_entries=20, min_coverage_pairs=10)
    none_yet = score_predictions(params)
    assert (none_yet.due, none_yet.scored, none_yet.waiting) == (6, 0, 6)

    mongo_block.upsert_candles(SYMBOL, "1h", later.iloc[:3], source="generated")
    first = score_predictions(params)
    assert (first.scored, first.waiting) == (3, 3)
    scored = mongo_block.ledger.entries_find({"task_id": result.task_id, "scored": True})
    assert [e["hour"] for e in scored] == [1, 2, 3]
    for e in scored:
        outcome = float(later["close"].loc[pd.Timestamp(e["target_time"])])
        assert e["outcome_price"] == pytest.approx(outcome)
        assert e["inside"] == (e["lower"] <= outcome <= e["upper"])
        assert e["rose"] == (outcome > result.last_price)
        assert e["hit"] == ((e["predicted_price"] > result.last_price) == e["rose"])
        side = 1 if e["predicted_price"] > result.last_price else -1
        expected_pnl = side * 100 * (outcome / result.last_price - 1) - 0.2
        assert e["pnl_pct"] == pytest.approx(expected_pnl)

    again = score_predictions(params)  # nothing new arrived: nothing scored twice
    assert (again.due, again.scored, again.waiting) == (3, 0, 3)
    rescored = mongo_block.ledger.entries_find({"task_id": result.task_id, "scored": True})
    assert [e["scored_at"] for e in rescored] == [e["scored_at"] for e in scored]
    assert mongo_block.ledger.entries_mark_scored(scored[:1]) == 0  # a late second scorer

    mongo_block.upsert_candles(SYMBOL, "1h", later.iloc[3:], source="generated")
    last = score_predictions(params)
    assert (last.scored, last.waiting, last.decayed) == (3, 0, [])
    model = next(m for m in last.models if m.model_id == record.model_id)
    assert [(f.kind, f.hour, f.scored) for f in model.figures] == [
        ("price", h, 1) for h in range(1, 7)
    ]
    assert model.decay.decayed is False and "direction not judged: 1 of 20" in model.decay.note
    stored = mongo_block.ledger.live_scores_latest([record.model_id])
    assert len(stored) == 1 and stored[0]["created_at"] >= datetime.now(UTC) - timedelta(minutes=5)
    assert (
        mongo_block.col(C.MODEL_LIVE_SCORES).count_documents({"model_id": record.model_id}) == 3
    )  # judged once it had scores
    live = [a for a in _artifacts(last.task_id) if a.key == "live-model-scores"]
    assert live and record.model_id in live[0].data and "data:image/png;base64," in live[0].data

    # the flows that judge models, and the metrics, read the same live record
    (summary,) = deployed_live_figures.fn(mongo_block)
    assert summary.model_id == record.model_id and summary.decayed is False
    assert summary.hit_rate == model.figures[0].hit_rate
    families = {f.name: f for f in live_model_metrics(mongo_block, datetime.now(UTC))}
    (sample,) = families["botai_model_decayed"].samples
    assert sample.value == 0.0 and sample.labels["model_id"] == record.model_id
    # operators see the same live figures beside the held-out ones (botai models list)
    listed = registry_ops.list_versions(
        mongo_block, symbol=SYMBOL, live_source=ledger_live_source(mongo_block)
    )
    (version,) = listed.versions
    assert version.live is not None and version.live.decayed is False
    assert version.live.scored_predictions == model.decay.direction_scored
    assert version.live.hit_rate == model.figures[0].hit_rate
    assert (
        version.live.measured_from == later.index[0] and version.live.measured_to == later.index[5]
    )


@pytest.mark.tc("TC-ASYNC-020")
def test_score_predictions_runs_hourly_on_the_scheduled_queue() -> None:
    deps = {
        d["name"]: d
        for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    }
    d = deps["score-predictions"]
    assert d["work_pool"] == {"name": "botai-process", "work_queue_name": "scheduled"}
    assert d["schedules"] == [{"cron": "5 * * * *", "timezone": "UTC"}]
    from flows.score_predictions import score_predictions

    assert d["entrypoint"] == "flows/score_predictions.py:score_predictions"
    assert score_predictions.name == "score-predictions"


@pytest.mark.tc("TC-ASYNC-013")
def test_a_forecast_the_ledger_refuses_is_never_acknowledged(
    mongo_block: Store, model_store_block
) -> None:
    from flows.predict_price import predict_price

    candles = make_candles(2600, seed=6)
    mongo_block.upsert_candles(SYMBOL, "1h", candles.iloc[1200:], source="generated")
    deploy_small_model(
        mongo_block,
        Path(model_store_block.directory),
        model_store_block.get_key(),
        candles.iloc[:1200],
        symbol=SYMBOL,
        epochs=1,
    )
    # the store refuses the second hour's entry (a unique key its entries share)
    mongo_block.col(C.PREDICTION_LEDGER).create_index("kind", unique=True)
    params = PredictPriceParams(symbol=SYMBOL, model_type="gru", horizon_hours=2)

    state = predict_price(params, return_state=True)

    assert state.is_failed() and "recording predictions in the ledger" in str(state.message)
    run_id = str(state.state_details.flow_run_id)
    assert mongo_block.task_result_get(run_id) is None  # no result a client could see
    assert mongo_block.col(C.PREDICTION_LEDGER).count_documents({"task_id": run_id}) == 1
