"""The ready message of `botai up` shows a newcomer how to get a forecast, with commands
whose parameters the flows accept as they are pasted."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from core.schemas.analysis import PredictPriceParams
from core.schemas.training import TrainModelParams
from deployments.ready import first_forecast_message
from deployments.up import FIRST_PIPELINE, StackInfo, first_model_version
from integrations.store import Store


def _info(store: Store, gateway: bool) -> StackInfo:
    return StackInfo(
        ui_url="http://127.0.0.1:4200",
        api_url="http://127.0.0.1:4200/api",
        mongodb_uri="mongodb://127.0.0.1:27017",
        blocks=[],
        demo_summary="",
        deployments=list(FIRST_PIPELINE) + ["predict-price/predict-price"],
        seconds_to_ready=1.0,
        gateway_url="http://127.0.0.1:8000/api" if gateway else None,
        first_model=first_model_version(store),
    )


def _params(line: str) -> dict:
    """The JSON of ``--param params='...'`` in a pasted command line."""
    words = shlex.split(line.split(": ", 1)[-1])
    return json.loads(words[words.index("--param") + 1].removeprefix("params="))


@pytest.mark.tc("TC-ASYNC-013")
def test_the_first_forecast_steps_name_the_version_and_paste_as_valid_runs(store: Store):
    message = first_forecast_message(_info(store, gateway=True))
    assert "lstm-BTCUSDT-1h-v1" in message  # a fresh store: the first training's version
    lines = message.splitlines()
    train = next(line for line in lines if "train-model/train-model" in line)
    TrainModelParams(**_params(train))
    steps = [line for line in lines if re.match(r"\s+[234]\. ", line)]
    assert [s.split(".")[0].strip() for s in steps] == ["2", "3", "4"]
    assert "botai models list --symbol BTCUSDT --timeframe 1h --model-type lstm" in steps[0]
    assert 'botai models promote lstm-BTCUSDT-1h-v1 --reason "first forecast"' in steps[1]
    assert PredictPriceParams(**_params(steps[2])).model_version is None
    direct = PredictPriceParams(**_params(lines[-1]))
    assert (direct.model_version, direct.model_type) == ("lstm-BTCUSDT-1h-v1", "lstm")

    store.model_insert(  # a stack that already trained twice: the next one is v3
        {
            "model_id": "a" * 32,
            "model_type": "lstm",
            "symbol": "BTCUSDT",
            "timeframe": "1h",
            "version": 2,
            "status": "candidate",
        }
    )
    assert "lstm-BTCUSDT-1h-v3" in first_forecast_message(_info(store, gateway=True))
    without = first_forecast_message(_info(store, gateway=False))
    assert "botai models promote" not in without and "BOTAI_API_JWT_SECRET" in without
