"""backtest-strategy with strategy_name="model": a real model trained by train-model is
backtested through our engine over a range it never saw (out-of-sample) and over its own
held-out slice (IN-SAMPLE: the deploy rule selected it there), in the result and the artifact;
bad parameters are refused with the argument and the fix, by the flow and by the gateway's
request schema."""

from __future__ import annotations

from datetime import date

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)
from pydantic import ValidationError

from api.request_schemas import request_model
from core.exceptions import InvalidInputError
from core.schemas.backtest import BacktestParameters
from core.schemas.training import TrainModelParams
from flows.backtest_strategy import backtest_strategy
from flows.train_model import train_model
from integrations.store import Store
from tests.ml.helpers import make_candles

#: 2,000 hours ending 2026-11-01; train-model loads the newest 30 days (2026-10-02 on).
CANDLES_END = "2026-11-01"


@pytest.fixture
def trained(monkeypatch, mongo_block: Store, model_store_block):  # noqa: ANN001, ANN201
    monkeypatch.setenv("BOTAI_MIN_FREE_DISK_GB", "0.1")
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    mongo_block.upsert_candles("BTCUSDT", "1h", make_candles(2000, end=CANDLES_END), source="t")
    params = TrainModelParams(
        model_type="gru",
        symbol="BTCUSDT",
        seed=1,
        days_of_data=30,
        epochs=3,
        batch_size=32,
        learning_rate=3e-3,
        units=8,
        lookback=12,
    )
    return train_model(params)


def _params(start: date, end: date, **parameters) -> BacktestParameters:  # noqa: ANN003
    return BacktestParameters(
        strategy_name="model",
        symbol="BTCUSDT",
        timeframe="1h",
        start_date=start,
        end_date=end,
        parameters=parameters,
    )


def _decider(decision) -> str:  # noqa: ANN001
    return "both tests" if decision.decided_by == "both" else f"the {decision.decided_by} test"


def _markdown(flow_run_id: str) -> str:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return next(a for a in arts if a.type == "markdown").data


@pytest.mark.tc("TC-ASYNC-066", "TC-ASYNC-074")
def test_a_trained_model_is_backtested_in_and_out_of_sample(trained, mongo_block: Store):
    model_id = trained.model_id
    # train-model traded the model's held-out signals after fees and published the curves
    econ = trained.economics
    assert [s.name for s in econ.strategies] == ["model", "buy_and_hold", "logistic_regression"]
    assert econ.start == trained.deployment.holdout_start and econ.fee_bps == 10.0
    assert trained.deployment.rule == "both" and trained.deployment.economic is not None
    assert trained.deployment.reason.endswith(f"decided by {_decider(trained.deployment)}]")
    with get_client(sync_client=True) as client:
        (art,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["economics-gru-btcusdt-1h"]))
        )
    assert "| buy and hold |" in art.data and "data:image/png;base64," in art.data
    # September: before anything the training loaded
    out = backtest_strategy(_params(date(2026, 9, 1), date(2026, 9, 25), model_id=model_id))
    assert out.strategy_name == "model" and out.in_sample is False
    assert out.model.model_id == model_id and out.model.version == 1
    assert out.parameters == {
        "model_id": model_id,
        "model_type": "gru",
        "version": 1,
        "threshold": 0.5,
    }
    assert out.bars == 24 * 24 and out.metrics.total_trades == len(out.trades) > 0
    assert out.model.seen_start.isoformat() >= "2026-10-02"
    assert out.model.note.startswith("out-of-sample: the model never saw these bars")
    md = _markdown(out.task_id)
    assert "**Out-of-sample**" in md and "IN-SAMPLE" not in md
    saved = mongo_block.jobs.backtest_result_get(out.task_id)
    assert saved["result"]["in_sample"] is False

    # the held-out slice it was selected on, and after: in-sample
    ins = backtest_strategy(_params(date(2026, 10, 20), date(2026, 11, 1), model_id=model_id))
    d = trained.deployment
    assert ins.in_sample is True and ins.model.seen_end > d.holdout_end
    assert ins.model.note.startswith("IN-SAMPLE: the range overlaps the bars the model was")
    md = _markdown(ins.task_id)
    assert "**IN-SAMPLE**" in md
    # the same signals on a range the candles' history covers give the engine's trades
    assert ins.metrics.total_trades > 0 and ins.start.isoformat().startswith("2026-10-20")


@pytest.mark.tc("TC-ASYNC-083")
def test_model_parameters_are_checked_with_the_argument_and_the_fix(trained, mongo_block: Store):
    start, end = date(2026, 9, 1), date(2026, 9, 25)
    deployed = trained.model_status == "deployed"
    missing = "transformer"  # never trained here
    with pytest.raises(InvalidInputError, match="parameters.model_type: no deployed transformer"):
        backtest_strategy(_params(start, end, model_type=missing))
    if deployed:  # the deployed gru is found by its type
        assert backtest_strategy(_params(start, end, model_type="gru")).model.model_id
    with pytest.raises(InvalidInputError, match="parameters.model_id: no model 'nope'"):
        backtest_strategy(_params(start, end, model_id="nope"))
    for bad, words in [
        ({}, "name exactly one model: parameters.model_type"),
        ({"model_type": "gru", "model_id": trained.model_id}, "name exactly one model"),
        ({"model_type": "cnn"}, "parameters.model_type: model_type must be one of"),
        ({"rsi_period": 14}, "parameters.rsi_period: unknown parameter; allowed: model_type"),
    ]:
        with pytest.raises(ValidationError, match=words):
            _params(start, end, **bad)
    # the gateway's request body takes the model form and refuses the bad ones
    body = request_model(BacktestParameters)
    base = {"strategy_name": "model", "symbol": "BTCUSDT", "start_date": "2026-09-01"}
    base["end_date"] = "2026-09-25"
    ok = body.model_validate({**base, "parameters": {"model_id": trained.model_id}})
    assert ok.parameters == {"model_id": trained.model_id}
    schema = body.model_json_schema()
    assert "model" in schema["properties"]["strategy_name"]["enum"]
    with pytest.raises(ValidationError, match="name exactly one model"):
        body.model_validate({**base, "parameters": {}})
