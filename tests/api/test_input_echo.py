"""A long invalid input is never echoed back whole: the gateway's 422 answers and the
parameter models' own messages quote at most 80 characters of it and say how long it was."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.main import create_app
from api.security import issue_token
from api.settings import load_api_settings
from backtest.strategies import get_strategy
from core.exceptions import InvalidInputError
from core.schemas.backtest import BacktestParameters
from core.schemas.market_data import IngestParameters
from core.schemas.training import TrainModelParams
from integrations.store import C, Store

pytestmark = pytest.mark.tc("TC-ASYNC-096", "TC-ASYNC-083")

SECRET = "echo-test-signing-secret-" + "e" * 24
LONG = "x" * 10_000


@pytest.fixture
def gateway(store: Store) -> tuple[TestClient, dict[str, str]]:
    settings = load_api_settings(jwt_secret=SECRET)
    token = issue_token(settings, "erin", admin=True)
    client = TestClient(create_app(settings, store_factory=lambda: store))
    return client, {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("path", "body", "expected", "quoted"),
    [
        ("/api/tasks/train", {"model_type": LONG}, "model_type must be one of", True),
        ("/api/tasks/train", {"symbol": "A" * 10_000}, "Invalid trading symbol 'AAAA", True),
        ("/api/tasks/train", {"timeframe": LONG}, "timeframe must be one of", True),
        ("/api/tasks/train", {LONG: 1}, "Extra inputs are not permitted", True),
        (
            "/api/tasks/backtest",
            {"strategy_name": LONG, "symbol": "BTCUSDT", "start_date": "2024-01-01"},
            "strategy_name: Input should be 'rsi'",
            False,
        ),
    ],
)
def test_gateway_422_quotes_at_most_80_characters_of_an_input(
    gateway, store: Store, path: str, body: dict, expected: str, quoted: bool
) -> None:
    client, admin = gateway
    r = client.post(path, json=body, headers=admin)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert expected in error
    assert ("... (10000 chars)" in error) is quoted
    assert "x" * 81 not in error and "A" * 81 not in error
    assert len(error) < 600, error
    assert store.col(C.API_USAGE).count_documents({}) == 0  # nothing reserved or queued


def test_many_invalid_items_are_summarised(gateway) -> None:
    client, admin = gateway
    r = client.post("/api/tasks/train", json={f"knob{i}": 1 for i in range(400)}, headers=admin)
    assert r.status_code == 422
    error = r.json()["error"]
    assert "knob0: Extra inputs are not permitted" in error and "... and 390 more" in error
    assert "knob10:" not in error and len(error) < 1000


def test_parameter_models_quote_long_inputs_short() -> None:
    """The same models validate flow runs started from the Prefect UI or CLI."""
    cases = [
        (lambda: TrainModelParams(model_type=LONG), "model_type must be one of"),
        (lambda: TrainModelParams(timeframe=LONG), "timeframe must be one of"),
        (lambda: IngestParameters(symbols=["A" * 10_000]), "Invalid trading symbol"),
        (
            lambda: BacktestParameters(
                strategy_name="rsi", symbol=LONG, start_date="2024-01-01", end_date="2024-02-01"
            ),
            "Invalid trading symbol",
        ),
    ]
    for build, expected in cases:
        with pytest.raises(ValidationError) as info:
            build()
        text = str(info.value)
        assert expected in text and "... (10000 chars)" in text, text[:300]
        assert "x" * 200 not in text and "A" * 200 not in text
    with pytest.raises(InvalidInputError) as info:
        get_strategy(LONG)
    assert "... (10000 chars)" in str(info.value) and len(str(info.value)) < 300
