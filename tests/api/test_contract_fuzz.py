"""The gateway fuzzed from its own OpenAPI schema (schemathesis) against real backends.

Every operation of the schema, each generated request sent three times: with an admin's
token, a regular user's and none. Requests come from the schema's examples, its boundary
values (schemathesis' coverage phase: each field's limits and each way to break them) and
a bounded, seeded random search. Every answer must keep the schema: no 5xx, a declared
status with its declared body and headers, a schema-valid request never refused as invalid
(a 422 for it may only name the stored data or an earlier Idempotency-Key, never a field),
an invalid one always refused, undeclared methods 405 with ``Allow``.

The gateway is the real app on the session's Prefect server (every job's deployment
registered on a pool nobody serves, so accepted requests create real queued runs) and a
real nx-27017 store. Afterwards the runs in Prefect, the ``api_usage`` records and the
quota counters must be exactly those of the 202 answers: no refused request created a run
or used quota.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import hypothesis
import pytest
import schemathesis
from fastapi.testclient import TestClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Cancelled

from api.main import create_app
from api.security import issue_token
from api.settings import ApiSettings, load_api_settings
from integrations.market_data.synthetic import generate_candles
from integrations.store import C, Store, connect
from tests.api.conftest import SECRET
from tests.api.contract import (
    CROSS_FIELD_CHECKS,
    Ledger,
    register_job_deployments,
    satisfies_cross_field_rules,
)

#: Random requests per operation after the examples and boundary values (bounded run).
MAX_EXAMPLES = int(os.environ.get("BOTAI_FUZZ_MAX_EXAMPLES", "8"))
SEED = 20261207

#: Only the documents app: the schema is read from it; requests go to the test's gateway.
_SCHEMA_APP = create_app(load_api_settings(jwt_secret=SECRET))
_OPENAPI = _SCHEMA_APP.openapi()

schema = schemathesis.openapi.from_asgi(
    "/openapi.json",
    _SCHEMA_APP,
    config=schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "generation": {
                "max-examples": MAX_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
            "phases": {"stateful": {"enabled": False}},
            "operations": [
                {
                    # a valid job request may still be refused for the stored data (422,
                    # declared); valid_requests_are_not_refused_as_invalid holds the rest
                    "include-name-regex": "^POST /api/tasks/[a-z-]+$",
                    "checks": {
                        "positive_data_acceptance": {
                            "expected-statuses": ["2xx", "401", "403", "409", "422", "429"]
                        }
                    },
                }
            ],
        }
    ),
)


def _cross_field_rules() -> dict[str, list[str]]:
    """``METHOD path`` -> the rules its body's schema states in ``x-cross-field-rules``."""
    components = _OPENAPI["components"]["schemas"]
    rules = {}
    for path, operations in _OPENAPI["paths"].items():
        for method, operation in operations.items():
            content = operation.get("requestBody", {}).get("content", {})
            ref = content.get("application/json", {}).get("schema", {}).get("$ref", "")
            body = components.get(ref.rsplit("/", 1)[-1], {})
            rules[f"{method.upper()} {path}"] = body.get("x-cross-field-rules", [])
    return rules


CROSS_FIELD_RULES = _cross_field_rules()


@schema.hook
def filter_case(context: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    """A schema-valid body must also keep the rules its schema states in words."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return True
    return satisfies_cross_field_rules(CROSS_FIELD_RULES[case.operation.label], case.body)


def valid_requests_are_not_refused_as_invalid(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> bool | None:
    """A schema-valid request answered 422 must be refused for the stored data or an earlier
    Idempotency-Key, never as invalid parameters: the schema states every parameter rule."""
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or response.status_code != 422:
        return None
    error = response.json().get("error", "")
    assert not error.startswith("Invalid parameters"), (
        f"a request the schema calls valid was refused as invalid: {error}"
    )
    return None


@pytest.fixture(scope="module")
def fuzz_pool(prefect_server: str) -> Iterator[str]:
    """Every job's deployment on a pool nobody serves; open runs cancelled and the deployments
    and pool deleted afterwards (later tests on the session's server see which jobs are
    deployed there)."""
    pool = f"fuzz-{uuid.uuid4().hex[:6]}"
    deployment_ids = register_job_deployments(pool)
    yield pool
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=["api"])), limit=200
        )
        for run in runs:
            if run.state is None or not run.state.is_final():
                client.set_flow_run_state(run.id, Cancelled(), force=True)
        for deployment_id in deployment_ids:
            client.delete_deployment(deployment_id)
        client.delete_work_pool(pool)


@pytest.fixture(scope="module")
def fuzz_settings() -> ApiSettings:
    return load_api_settings(jwt_secret=SECRET)


@pytest.fixture(scope="module")
def seeded_mongo(mongo_uri: str) -> Iterator[tuple[str, str]]:
    """A database holding January 2025 of BTCUSDT 4h candles (the schema's examples run
    on them), shared by the operations: (URI, database name)."""
    client = connect(mongo_uri)
    name = f"fuzz_{uuid.uuid4().hex[:8]}"
    store = Store(client, name)
    store.ensure_indexes()
    start = datetime(2025, 1, 1, tzinfo=UTC)
    frame = generate_candles("BTCUSDT", "4h", start, 31 * 6)
    store.upsert_candles("BTCUSDT", "4h", frame, source="synthetic")
    yield mongo_uri, name
    client.drop_database(name)
    client.close()


@pytest.fixture
def seeded_store(seeded_mongo: tuple[str, str]) -> Iterator[Store]:
    """The seeded database, its usage and quota records emptied (each operation's count)."""
    client = connect(seeded_mongo[0])
    store = Store(client, seeded_mongo[1])
    for name in (C.API_USAGE, C.API_QUOTA):
        store.col(name).delete_many({})
    yield store
    client.close()


@pytest.fixture
def gateway(
    fuzz_pool: str, fuzz_settings: ApiSettings, seeded_store: Store
) -> Iterator[tuple[Ledger, dict[str, dict[str, str]]]]:
    """The real gateway behind a :class:`Ledger`, and the three callers' headers.

    Afterwards: the runs Prefect holds for these callers, the ``api_usage`` records and
    the quota counters are exactly those of the 202 answers.
    """
    tag = uuid.uuid4().hex[:8]
    users = {"admin": f"fuzz-{tag}-admin", "user": f"fuzz-{tag}-user"}
    callers = {
        "admin": {
            "Authorization": f"Bearer {issue_token(fuzz_settings, users['admin'], admin=True)}"
        },
        "user": {"Authorization": f"Bearer {issue_token(fuzz_settings, users['user'])}"},
        "anonymous": {},
    }
    ledger = Ledger(create_app(fuzz_settings, store_factory=lambda: seeded_store))
    yield ledger, callers

    accepted = ledger.accepted()
    with get_client(sync_client=True) as client:
        runs = {
            str(run.id)
            for user in users.values()
            for run in client.read_flow_runs(
                flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[f"user:{user}"]))
            )
        }
    assert runs == accepted, "runs created without a 202 answer (or answered without a run)"
    usage = seeded_store.col(C.API_USAGE)
    recorded = {d["task_id"] for d in usage.find({}, {"task_id": 1}) if d["task_id"]}
    assert recorded == accepted, "api_usage records of runs that were never accepted"
    assert usage.count_documents({"task_id": None}) == 0, "quota reservations left behind"
    used = sum(d["used"] for d in seeded_store.col(C.API_QUOTA).find({}, {"used": 1}))
    assert used == len(accepted), f"{used} quota slots used for {len(accepted)} accepted runs"


@pytest.mark.tc("TC-ASYNC-002", "TC-ASYNC-094", "TC-ASYNC-095", "TC-ASYNC-096", "TC-ASYNC-098")
@schema.parametrize()
@hypothesis.settings(
    deadline=None,
    # one gateway (and store) per operation, shared by its generated requests on purpose
    suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture],
)
def test_gateway_keeps_its_openapi_contract(case: schemathesis.Case, gateway) -> None:
    ledger, callers = gateway
    # each generated request goes as the next caller in turn: admin, user, anonymous
    who = list(callers)[len(ledger.calls) % len(callers)]
    ledger.calls.append(who)
    case.call_and_validate(
        app=ledger,
        headers=callers[who],
        additional_checks=[valid_requests_are_not_refused_as_invalid],
    )


@pytest.mark.tc("TC-ASYNC-094")
def test_the_schema_declares_each_routes_answers_and_its_unstated_rules():
    """What the fuzz holds the gateway to: each route's statuses (403 only where a route
    checks the role), every error as ``ErrorBody``, the rules JSON Schema cannot state
    named in words and known to the fuzz."""
    paths = _OPENAPI["paths"]
    train = paths["/api/tasks/train"]["post"]["responses"]
    assert set(train) == {"202", "401", "403", "409", "422", "429", "500", "503"}
    assert set(paths["/api/tasks/backtest"]["post"]["responses"]) == set(train) - {"403"}
    assert "Retry-After" in train["429"]["headers"]
    assert "WWW-Authenticate" in train["401"]["headers"]
    task = paths["/api/tasks/{task_id}"]
    # 422 everywhere: a query parameter a route does not take is refused
    assert set(task["get"]["responses"]) == {"200", "401", "403", "404", "422", "500", "503"}
    assert set(task["delete"]["responses"]) == {
        "202",
        "401",
        "403",
        "404",
        "409",
        "422",
        "500",
        "503",
    }
    assert set(paths["/api/tasks"]["get"]["responses"]) == {"200", "401", "422", "500", "503"}
    letters = paths["/api/dead-letters"]["get"]["responses"]
    assert set(letters) == {"200", "401", "403", "422", "500", "503"}
    for operations in paths.values():
        for operation in operations.values():
            for code, answer in operation["responses"].items():
                if (
                    code.startswith(("4", "5"))
                    and operation["operationId"] != "health_api_health_get"
                ):
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (operation["operationId"], code)
    components = _OPENAPI["components"]["schemas"]
    assert "HTTPValidationError" not in components  # every 422 is an ErrorBody
    backtest = components["BacktestParameters"]
    assert "end_date must be a later day than start_date" in backtest["description"]
    stated = {rule for rules in CROSS_FIELD_RULES.values() for rule in rules}
    assert "end_date after start_date" in stated and "start before end" in stated
    assert stated <= set(CROSS_FIELD_CHECKS), "a rule the fuzz does not know how to keep"


@pytest.mark.tc("TC-ASYNC-002", "TC-ASYNC-094")
def test_routing_and_body_errors_answer_declared_statuses_with_the_error_body(
    fuzz_settings: ApiSettings, store: Store
):
    """The answers the first hand-run of the fuzz found outside the schema."""
    client = TestClient(create_app(fuzz_settings, store_factory=lambda: store))
    admin = {"Authorization": f"Bearer {issue_token(fuzz_settings, 'root', admin=True)}"}
    r = client.get("/api/tasks/predict", headers=admin)  # a job name is not a task id
    assert r.status_code == 405 and r.headers["Allow"] == "POST"
    assert r.json() == {"error": "Method GET not allowed on this path: use POST"}
    r = client.put(f"/api/tasks/{uuid.uuid4()}", headers=admin)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, DELETE"
    r = client.get("/api/tasks/not-a-task-id", headers=admin)
    assert r.status_code == 404 and "see /docs" in r.json()["error"]
    for body, kind in ((b"{bad", "application/json"), (b"epochs=5", "text/plain")):
        r = client.post("/api/tasks/predict", content=body, headers={**admin, "Content-Type": kind})
        assert r.status_code == 422 and "Invalid parameters" in r.json()["error"], r.text
    r = client.post("/api/tasks/predict", content=b"{bad", headers=admin)  # no content type
    assert r.json()["error"] == (
        "Invalid parameters: the body must be a JSON object sent with Content-Type: "
        "application/json"
    )
    r = client.post("/api/tasks/predict", json=[1], headers=admin)
    assert r.status_code == 422 and "must be a JSON object" in r.json()["error"]
    r = client.get("/api/dead-letters")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = client.get("/api/dead-letters?limit=0", headers=admin)
    assert r.status_code == 422 and "limit" in r.json()["error"]
    # lax coercion is refused: false is not a number, "7" not an integer
    user = {"Authorization": f"Bearer {issue_token(fuzz_settings, 'ann')}"}
    r = client.post(
        "/api/tasks/bulk-analysis",
        json={"symbols": ["BTCUSDT"], "min_confidence": False},
        headers=user,
    )
    assert r.status_code == 422
    assert r.json()["error"] == (
        "Invalid parameters: min_confidence: expected number or null, got boolean"
    )
    # a query parameter the route does not take is refused, not ignored (a misspelt one
    # would otherwise change nothing without a word); the ones it takes still work
    r = client.post(
        "/api/tasks/bulk-analysis?priorty=high", json={"symbols": ["BTCUSDT"]}, headers=user
    )
    assert r.status_code == 422
    assert r.json()["error"] == (
        "Invalid parameters: unknown query parameter(s) 'priorty'; this route takes: "
        "priority. Remove them"
    )
    r = client.get("/api/dead-letters?limit=5&=false", headers=admin)
    assert r.status_code == 422 and "unknown query parameter(s) ''" in r.json()["error"]
    assert client.get("/api/dead-letters?limit=5", headers=admin).status_code == 200
    assert store.col(C.API_USAGE).count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-066")
def test_a_range_far_wider_than_the_stored_bars_is_refused_without_loading_them(
    fuzz_settings: ApiSettings, seeded_store: Store
):
    """Found by the fuzz: a backtest over centuries of a symbol with many stored bars loaded
    every bar to word the refusal and outlasted the store timeout (503)."""
    client = TestClient(create_app(fuzz_settings, store_factory=lambda: seeded_store))
    user = {"Authorization": f"Bearer {issue_token(fuzz_settings, 'ann')}"}
    body = {"symbol": "BTCUSDT", "timeframe": "4h", "start_date": "1764-08-02"}
    r = client.post("/api/tasks/backtest", json={**body, "end_date": "2299-02-06"}, headers=user)
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith(
        "Insufficient data for BTCUSDT 4h from 1764-08-02 to 2299-02-06: expected 1171362 bars, "
        "found 186 bars from 2025-01-01 00:00 to 2025-01-31 20:00."
    )
    assert seeded_store.col(C.API_USAGE).count_documents({}) == 0
