"""Results for every caller: bulk-analysis and predict-price runs (real flow runs on the
session's Prefect server, run in this process) read back through the gateway and from the
result artifact on the run's page. The backtest's way through a real worker is in
test_gateway.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from prefect.task_runners import ThreadPoolTaskRunner

from api.main import create_app
from api.security import issue_token
from api.settings import load_api_settings
from core.schemas.analysis import BulkAnalysisParams, PredictPriceParams
from integrations.market_data.synthetic import generate_candles
from integrations.store import C, Store
from tests.api.test_gateway import SECRET
from tests.ml.helpers import deploy_small_model, make_candles


def read_back(store: Store, task_id: str) -> dict:
    settings = load_api_settings(jwt_secret=SECRET)
    client = TestClient(create_app(settings, store_factory=lambda: store))
    token = issue_token(settings, "root", admin=True)
    r = client.get(f"/api/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.json()
    return r.json()


def artifact_text(task_id: str, key: str) -> str:
    with get_client(sync_client=True) as prefect:
        (artifact,) = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(task_id)]),
                key=ArtifactFilterKey(any_=[key]),
            )
        )
    return artifact.data


@pytest.mark.tc("TC-ASYNC-011", "TC-ASYNC-012")
def test_a_bulk_analysis_result_is_read_back_sorted_with_failed_symbols(
    mongo_block: Store, prefect_server: str
):
    from flows.bulk_analysis import bulk_analysis

    start = datetime(2026, 9, 1, tzinfo=UTC)
    good = ["RESAUSDT", "RESBUSDT", "RESCUSDT"]
    for symbol in good:
        frame = generate_candles(symbol, "1h", start, 400)
        mongo_block.upsert_candles(symbol, "1h", frame, source="synthetic")
    symbols = [*good, "RESNUSDT", "bad"]
    flow = bulk_analysis.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    returned = flow(BulkAnalysisParams(symbols=symbols))

    status = read_back(mongo_block, returned.task_id)
    assert status["status"] == "SUCCESS" and status["job"] == "bulk-analysis"
    saved = status["result"]
    assert saved["result_type"] == "BulkAnalysisResult"
    result = saved["result"]
    assert [r["symbol"] for r in result["results"]] == [r.symbol for r in returned.results]
    confidences = [r["confidence"] for r in result["results"]]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) == 3
    failed = {f["symbol"]: f["reason"] for f in result["failed_symbols"]}
    assert set(failed) == {"RESNUSDT", "bad"} and "invalid symbol" in failed["bad"]
    text = artifact_text(returned.task_id, "bulk-analysis-result")
    assert "## Failed symbols" in text and "RESNUSDT" in text
    first = result["results"][0]
    assert f"| 1 | {first['symbol']} | {first['signal']} |" in text


@pytest.mark.tc("TC-ASYNC-013")
def test_a_price_prediction_is_read_back_hour_by_hour(
    mongo_block: Store, model_store_block, prefect_server: str
):
    from flows.predict_price import predict_price

    candles = make_candles(6000, seed=11)
    mongo_block.upsert_candles("PRDXUSDT", "1h", candles.iloc[-3000:], source="synthetic")
    deploy_small_model(
        mongo_block,
        Path(model_store_block.directory),
        model_store_block.get_key(),
        candles.iloc[:-3000],
        symbol="PRDXUSDT",
        epochs=1,
    )
    returned = predict_price(
        PredictPriceParams(symbol="PRDXUSDT", model_type="gru", horizon_hours=6)
    )

    status = read_back(mongo_block, returned.task_id)
    assert status["status"] == "SUCCESS" and status["job"] == "predict"
    result = status["result"]["result"]
    points = result["predictions"]
    assert [p["hour"] for p in points] == list(range(1, 7))
    for point, expected in zip(points, returned.predictions, strict=True):
        assert point["predicted_price"] == pytest.approx(expected.predicted_price)
        assert point["lower"] < point["predicted_price"] < point["upper"]
        assert 0.0 <= point["confidence"] <= 1.0
    assert mongo_block.col(C.TASK_RESULTS).count_documents({"task_id": returned.task_id}) == 1
    text = artifact_text(returned.task_id, "predict-price-result")
    assert text.count("\n| ") == 6 + 1  # header + one row per hour
    assert f"| 6 | {returned.predictions[-1].timestamp:%Y-%m-%d %H:%M} |" in text
