"""The model registry over HTTP and ``botai models``: admins only, every change audited with
the caller's name, errors that name the fix, and the CLI round trip from another terminal
against a real gateway (uvicorn) on a real store with real small models."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from api import prechecks
from api.access import admin_token_path, operator_name, write_gateway_access
from api.main import create_app
from api.security import issue_token
from api.settings import ApiSettings
from core.exceptions import InvalidInputError
from integrations.store import C, Store
from ml import registry_ops as ops
from tests.ml.helpers import make_candles
from tests.ml.registry_helpers import TrainedSmall, register_candidate, train_small
from tests.peers import free_port

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained() -> list[TrainedSmall]:
    candles = make_candles(800, seed=5)
    return [train_small(candles, seed=seed) for seed in (1, 2)]


@pytest.fixture
def versions(store: Store, tmp_path: Path, trained: list[TrainedSmall]) -> list[str]:
    """gru-APIMUSDT-1h-v1 and v2, candidates."""
    key = os.urandom(32)
    return [
        ops.label(register_candidate(store, tmp_path, key, t, symbol="APIMUSDT")) for t in trained
    ]


@pytest.fixture
def api(settings: ApiSettings, store: Store) -> TestClient:
    return TestClient(create_app(settings, store_factory=lambda: store))


def _as(settings: ApiSettings, user: str, admin: bool) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(settings, user, admin=admin)}"}


@pytest.mark.tc("TC-ASYNC-094", "TC-ASYNC-020")
def test_only_admins_operate_the_registry_and_nothing_changes_for_others(
    api: TestClient, settings: ApiSettings, store: Store, versions: list[str]
) -> None:
    v1 = versions[0]
    calls = [
        ("GET", "/api/models", None),
        ("GET", f"/api/models/compare?a={v1}&b={versions[1]}", None),
        ("GET", "/api/models/audit", None),
        ("POST", f"/api/models/{v1}/promote", {"reason": "try it"}),
        ("POST", f"/api/models/{v1}/archive", {"reason": "tidy"}),
        (
            "POST",
            "/api/models/rollback",
            {
                "key": {"model_type": "gru", "symbol": "APIMUSDT", "timeframe": "1h"},
                "reason": "x y",
            },
        ),
    ]
    user = _as(settings, "ann", admin=False)
    for method, path, body in calls:
        r = api.request(method, path, json=body, headers=user)
        assert r.status_code == 403 and r.json() == {"error": "Admin privileges required"}, path
        r = api.request(method, path, json=body)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", path
    assert {v.status for v in ops.list_versions(store).versions} == {"candidate"}
    assert store.col(C.MODEL_AUDIT).count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-020")
def test_admin_promotes_rolls_back_and_archives_with_reasons_in_the_audit(
    api: TestClient, settings: ApiSettings, store: Store, versions: list[str]
) -> None:
    v1, v2 = versions
    root = _as(settings, "root", admin=True)
    listed = api.get("/api/models?symbol=APIMUSDT&timeframe=1h&model_type=gru", headers=root)
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert [v["version"] for v in body["versions"]] == [v2, v1] and body["deployed"] == {}
    assert all(
        v["held_out"]["accuracy"] is not None and v["live"] is None for v in body["versions"]
    )

    r = api.post(f"/api/models/{v1}/promote", json={}, headers=root)
    assert r.status_code == 422
    assert r.json()["error"] == "Invalid parameters: reason: required: add it to the body"
    r = api.post("/api/models/gru-APIMUSDT-1h-v7/promote", json={"reason": "why"}, headers=root)
    assert r.status_code == 404 and "botai models list --symbol APIMUSDT" in r.json()["error"]

    r = api.post(f"/api/models/{v1}/promote", json={"reason": "first one"}, headers=root)
    assert r.status_code == 200 and r.json()["version"]["status"] == "deployed", r.text
    r = api.post(f"/api/models/{v2}/promote", json={"reason": "better"}, headers=root)
    assert r.json()["version"]["replaced_version"] == v1
    r = api.post(f"/api/models/{v2}/archive", json={"reason": "tidy"}, headers=root)
    assert r.status_code == 409 and "Roll back" in r.json()["error"]
    key = {"model_type": "gru", "symbol": "APIMUSDT", "timeframe": "1h"}
    r = api.post("/api/models/rollback", json={"key": key, "reason": "v2 lost money"}, headers=root)
    assert r.status_code == 200 and r.json()["version"]["version"] == v1, r.text
    r = api.post(f"/api/models/{v2}/archive", json={"reason": "lost money"}, headers=root)
    assert r.status_code == 200 and r.json()["version"]["status"] == "archived"
    r = api.post(f"/api/models/{v2}/promote", json={"reason": "again"}, headers=root)
    assert r.status_code == 409 and "never deployed again" in r.json()["error"]
    r = api.post("/api/models/rollback", json={"key": key, "reason": "once more"}, headers=root)
    assert r.status_code == 409 and "nothing to roll back to" in r.json()["error"]

    r = api.get(f"/api/models/compare?a={v1}&b={v2}", headers=root)
    assert r.status_code == 200 and r.json()["same_holdout"] is True
    audit = api.get("/api/models/audit?symbol=APIMUSDT", headers=root).json()
    changes = [
        (e["action"], e["version"], e["from_status"], e["to_status"]) for e in audit["entries"]
    ]
    assert changes[0] == ("archive", v2, "retired", "archived")  # newest first
    assert sorted(changes) == sorted(
        [
            ("archive", v2, "retired", "archived"),
            ("rollback", v1, "retired", "deployed"),
            ("rollback", v2, "deployed", "retired"),
            ("promote", v2, "candidate", "deployed"),
            ("promote", v1, "deployed", "retired"),
            ("promote", v1, "candidate", "deployed"),
        ]
    )
    assert {e["by"] for e in audit["entries"]} == {"root"}
    assert audit["entries"][0]["reason"] == "lost money"


@pytest.mark.tc("TC-ASYNC-013")
def test_prediction_precheck_serves_a_named_candidate_and_names_one_to_promote(
    store: Store, versions: list[str]
) -> None:
    v1, v2 = versions
    store.upsert_candles("APIMUSDT", "1h", make_candles(50, seed=5), source="synthetic")
    params = SimpleNamespace(symbol="APIMUSDT", model_type="gru", model_version=None)
    with pytest.raises(InvalidInputError) as caught:
        prechecks.prediction_data(params, store)
    message = str(caught.value)
    assert message.startswith("No deployed gru model for APIMUSDT (1h): its models stayed")
    assert f"botai models promote {v2} --reason" in message
    assert f"pass model_version={v2}" in message

    prechecks.prediction_data(SimpleNamespace(**{**vars(params), "model_version": v1}), store)
    with pytest.raises(InvalidInputError, match="is a gru APIMUSDT 1h model, the request asks"):
        prechecks.prediction_data(
            SimpleNamespace(**{**vars(params), "model_type": "lstm", "model_version": v1}), store
        )
    with pytest.raises(InvalidInputError, match="No model version gru-APIMUSDT-1h-v9"):
        prechecks.prediction_data(
            SimpleNamespace(**{**vars(params), "model_version": "gru-APIMUSDT-1h-v9"}), store
        )
    bulk = SimpleNamespace(symbols=["BTCUSDT"], timeframe="1h", model_version=v1)
    with pytest.raises(InvalidInputError, match="add APIMUSDT to symbols"):
        prechecks.bulk_model_version(bulk, store)


@pytest.fixture
def served_gateway(
    settings: ApiSettings, store: Store, tmp_path: Path
) -> Iterator[tuple[Path, ApiSettings]]:
    """The gateway served by uvicorn on a free port; the state folder it wrote its URL and
    operator token into (what ``botai-api serve`` does when ``botai up`` starts it)."""
    import uvicorn

    served = settings.model_copy(update={"port": free_port()})
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(served, store_factory=lambda: store),
            host="127.0.0.1",
            port=served.port,
            log_level="warning",
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the gateway did not start"
    state = tmp_path / "state"
    write_gateway_access(state, served)
    yield state, served
    server.should_exit = True
    thread.join(10)


def _botai(state: Path, *args: str) -> subprocess.CompletedProcess:
    """``botai ARGS`` as from a new terminal: only the state folder is known."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    # coverage.py's own variables (the suite measures subprocesses), none of the product's
    env.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    env["BOTAI_STATE_DIR"] = str(state)
    return subprocess.run(
        [sys.executable, "-m", "deployments.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.tc("TC-ASYNC-020", "TC-ASYNC-094")
def test_botai_models_round_trip_from_another_terminal(
    served_gateway: tuple[Path, ApiSettings], store: Store, versions: list[str]
) -> None:
    state, _ = served_gateway
    v1, v2 = versions
    assert admin_token_path(state).stat().st_mode & 0o777 == 0o600

    listed = _botai(state, "models", "list", "--symbol", "APIMUSDT")
    assert listed.returncode == 0, listed.stderr
    assert v1 in listed.stdout and v2 in listed.stdout and "candidate" in listed.stdout
    missing = _botai(state, "models", "promote", v1)
    assert missing.returncode == 2 and "--reason" in missing.stderr  # argparse: required

    promoted = _botai(state, "models", "promote", v1, "--reason", "first forecast")
    assert promoted.returncode == 0, promoted.stderr
    assert f"{v1} now serves gru APIMUSDT 1h" in promoted.stdout
    assert f"{v1}: candidate -> deployed" in promoted.stdout
    assert _botai(state, "models", "promote", v2, "--reason", "newer").returncode == 0
    compared = _botai(state, "models", "compare", v1, v2)
    assert compared.returncode == 0 and "difference" in compared.stdout, compared.stderr
    back = _botai(
        state,
        "models",
        "rollback",
        "--symbol",
        "APIMUSDT",
        "--timeframe",
        "1h",
        "--model-type",
        "gru",
        "--reason",
        "v2 misbehaves",
    )
    assert back.returncode == 0 and f"to {v1}" in back.stdout, back.stderr
    refused = _botai(state, "models", "archive", v1, "--reason", "tidy")
    assert refused.returncode == 1
    assert refused.stderr.startswith(f"botai models: 409: {v1} is the deployed version")
    assert _botai(state, "models", "archive", v2, "--reason", "tidy").returncode == 0

    entries = ops.audit_trail(store, symbol="APIMUSDT")
    assert len(entries) == 6 and {e.by for e in entries} == {operator_name()}
    assert entries[0].reason == "tidy" and entries[-1].reason == "first forecast"
    audit = _botai(state, "models", "audit", "--symbol", "APIMUSDT")
    assert audit.returncode == 0 and audit.stdout.count(operator_name()) == 6

    gone = _botai(tmp := state.parent / "elsewhere", "models", "list")
    assert gone.returncode == 1 and f"no gateway recorded in {tmp}" in gone.stderr
