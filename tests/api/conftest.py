"""Fixtures of the gateway tests: work pools and deployments on the session's Prefect
server, the gateway's settings and a test client on the test's store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Cancelled

from api.main import create_app
from api.settings import ApiSettings, load_api_settings
from flows.backtest_strategy import backtest_strategy
from flows.train_model import train_model
from integrations.store import Store
from tests.api.helpers import SECRET
from tests.peers import create_process_deployment, create_process_pool


@pytest.fixture(scope="module")
def pools(prefect_server: str) -> Iterator[dict[str, str]]:
    """train-model on a pool nobody serves; backtest-strategy on a pool a test may serve.

    Afterwards every run the gateway created (tag "api") that is still open is cancelled.
    """
    names = {"idle": f"api-idle-{uuid.uuid4().hex[:6]}", "work": f"api-work-{uuid.uuid4().hex[:6]}"}
    create_process_pool(names["idle"], {"ml_training": None})
    create_process_pool(names["work"], {"backtesting": None})
    create_process_deployment(
        train_model, "train-model", names["idle"], "ml_training", "flows/train_model.py:train_model"
    )
    create_process_deployment(
        backtest_strategy,
        "backtest-strategy",
        names["work"],
        "backtesting",
        "flows/backtest_strategy.py:backtest_strategy",
    )
    yield names
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["api"])), limit=200
        )
        for run in runs:
            if run.state is None or not run.state.is_final():
                client.set_flow_run_state(run.id, Cancelled(), force=True)


@pytest.fixture
def settings() -> ApiSettings:
    return load_api_settings(jwt_secret=SECRET, prefect_ui_url="http://ui.test")


@pytest.fixture
def client(pools, settings: ApiSettings, store: Store) -> TestClient:
    return TestClient(create_app(settings, store_factory=lambda: store))
