"""llm-self-analysis through the real openai SDK against a local OpenAI-compatible server."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Response

from core.schemas.self_improvement import SelfAnalysisParams
from integrations.llm import InvalidAnswerError, cost_usd, parse_recommendation
from integrations.store import C, Store
from tests.peers import envelope
from tests.self_improvement.helpers import (
    LLM_IN_USD_PER_1M,
    LLM_KEY,
    LLM_OUT_USD_PER_1M,
    chat_completion,
    llm_requests,
    slack_messages,
)

CHAT = "/v1/chat/completions"
# nx-27017 misses documents when the upper bound is "now"; bound the ledger read generously
HOUR = (datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=3))
NO_RETRAIN = {
    "recommendation": "NO_RETRAINING",
    "confidence": 0.85,
    "urgency": "low",
    "reasoning": "All models performing above threshold (70%). Win rate 72% exceeds target.",
}
RETRAIN_LSTM = {
    "recommendation": "RETRAIN_LSTM",
    "confidence": 0.88,
    "urgency": "high",
    "reasoning": "LSTM model accuracy dropped to 60%, below 65% threshold. Win rate 40%.",
    "suggested_actions": ["retrain lstm on the last 60 days"],
}


def trades(wins: int, losses: int, win_pct: float, loss_pct: float) -> list[dict]:
    now = datetime.now(UTC)
    return [
        {
            "trade_id": f"t{i}",
            "strategy": "rsi",
            "symbol": "BTCUSDT",
            "profit_pct": win_pct if i < wins else -loss_pct,
            "closed_at": (now - timedelta(hours=i + 1)).isoformat(),
        }
        for i in range(wins + losses)
    ]


GOOD = trades(18, 7, 3.0, 1.0)  # win rate 72%, Sharpe > 2
CRITICAL = trades(6, 9, 1.0, 1.2)  # win rate 40%


def deployed_models(store: Store, accuracy: dict[str, float]) -> None:
    """One deployed BTCUSDT 1h model per type: its record and its deployed pointer."""
    for t, acc in accuracy.items():
        doc = {
            "model_id": uuid.uuid4().hex,
            "model_type": t,
            "symbol": "BTCUSDT",
            "timeframe": "1h",
            "version": 1,
            "status": "deployed",
            "metrics": {"val_accuracy": acc},
        }
        store.model_insert(doc)
        store.models.deploy_pointer_set(doc, "test", datetime.now(UTC))


@pytest.fixture
def llm_log() -> Iterator[list[str]]:
    """Every record logged (DEBUG and up) by the openai SDK, httpx and our LLM code."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("integrations.llm", "tasks.llm", "openai", "httpx")]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    yield lines
    for lg, level in zip(loggers, saved, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)


@pytest.fixture
def retrain_deployment(prefect_server: str, monkeypatch: pytest.MonkeyPatch):
    """A real deployment of the adaptive-retrain flow on the session server (unique name)."""
    from prefect.client.orchestration import get_client

    name = f"adaptive-retrain-test-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("BOTAI_ADAPTIVE_RETRAIN_DEPLOYMENT", f"adaptive-retrain/{name}")
    with get_client(sync_client=True) as client:
        dep_id = client.create_deployment(
            flow_id=client.create_flow_from_name("adaptive-retrain"), name=name
        )
        yield dep_id
        client.delete_deployment(dep_id)


def deployment_runs(dep_id) -> list:  # noqa: ANN001
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
        )


@pytest.mark.tc("TC-ASYNC-054", "TC-ASYNC-055")
def test_parse_recommendation_strict() -> None:
    fenced = "```json\n" + json.dumps(NO_RETRAIN) + "\n```"
    assert parse_recommendation(fenced).recommendation == "NO_RETRAINING"
    for bad in (
        "This is not valid JSON",
        "Sure! " + json.dumps(NO_RETRAIN),
        json.dumps({**NO_RETRAIN, "recommendation": "wait"}),
        json.dumps({**NO_RETRAIN, "confidence": 1.5}),
        json.dumps([NO_RETRAIN]),
    ):
        with pytest.raises(InvalidAnswerError):
            parse_recommendation(bad)
    assert cost_usd(500, 200, 30.0, 60.0) == pytest.approx(0.027)


@pytest.mark.tc("TC-ASYNC-051", "TC-ASYNC-055", "TC-ASYNC-060", "TC-ASYNC-061", "TC-ASYNC-099")
def test_skip_then_forced_no_retraining(
    blocks_env: Store, peer: HTTPServer, retrain_deployment, llm_log: list[str]
) -> None:
    from flows.llm_self_analysis import llm_self_analysis

    peer.expect_request("/api/trades/closed").respond_with_json(envelope(GOOD))
    peer.expect_request(CHAT, method="POST").respond_with_json(
        chat_completion("```json\n" + json.dumps(NO_RETRAIN) + "\n```", 500, 200)
    )
    deployed_models(blocks_env, {"lstm": 0.72, "gru": 0.70, "transformer": 0.73})

    skipped = llm_self_analysis()
    assert skipped.status == "skipped" and "performance acceptable (GOOD" in skipped.skip_reason
    assert llm_requests(peer) == []

    result = llm_self_analysis(SelfAnalysisParams(force_analysis=True))
    assert result.status == "success" and result.performance.win_rate == 72.0
    a = result.analysis
    assert a.recommendation == "NO_RETRAINING" and a.confidence >= 0.7
    assert "performing above threshold" in a.reasoning.lower()
    assert a.retrain_triggered is False and deployment_runs(retrain_deployment) == []
    # the request: JSON mode, the block's model, the prompt states the thresholds
    (req,) = llm_requests(peer)
    assert req["response_format"] == {"type": "json_object"} and req["model"] == "test-model"
    assert "critical below 55" in req["messages"][1]["content"]
    auth = [r.headers["Authorization"] for r, _ in peer.log if r.path == CHAT]
    assert auth == [f"Bearer {LLM_KEY}"] and llm_log and LLM_KEY not in "\n".join(llm_log)
    # cost: 500 * $30/1M + 200 * $60/1M = $0.027
    (cost,) = blocks_env.llm_costs_between(*HOUR)
    assert (cost["prompt_tokens"], cost["completion_tokens"]) == (500, 200)
    assert cost["cost_usd"] == pytest.approx(0.027) and cost["model"] == "test-model"
    assert cost["run_id"] == result.task_id and result.cost_usd == pytest.approx(0.027)
    hist = blocks_env.improvement.llm_analyses_find({"task_id": result.task_id})
    assert len(hist) == 1 and hist[0]["cost_usd"] == pytest.approx(0.027)
    assert hist[0]["decision"]["recommendation"] == "NO_RETRAINING"


@pytest.mark.tc("TC-ASYNC-052")
def test_retrain_recommendation_starts_deployment(
    blocks_env: Store, peer: HTTPServer, retrain_deployment
) -> None:
    from flows.llm_self_analysis import llm_self_analysis

    peer.expect_request("/api/trades/closed").respond_with_json(envelope(CRITICAL))
    peer.expect_request(CHAT, method="POST").respond_with_json(
        chat_completion(json.dumps(RETRAIN_LSTM))
    )
    deployed_models(blocks_env, {"lstm": 0.60, "gru": 0.71, "transformer": 0.72})
    result = llm_self_analysis()  # CRITICAL: analysed without force_analysis
    a = result.analysis
    assert result.status == "success" and a.recommendation == "RETRAIN_LSTM"
    assert a.confidence >= 0.75 and a.urgency == "high" and a.retrain_triggered is True
    (req,) = llm_requests(peer)
    prompt = req["messages"][1]["content"]
    assert '"lstm": 0.6' in prompt and '"win_rate": 40.0' in prompt
    assert "Recent trainings per model type" in prompt and '"val_accuracy": 0.6' in prompt
    (run,) = deployment_runs(retrain_deployment)
    assert str(run.id) == a.retrain_flow_run_id
    assert run.parameters["params"]["model_types"] == ["lstm"]
    assert "accuracy dropped to 60%" in run.parameters["params"]["reason"]
    assert blocks_env.col(C.LLM_ANALYSIS_HISTORY).find_one({"task_id": result.task_id})["decision"][
        "retrain_triggered"
    ]


@pytest.mark.tc("TC-ASYNC-053", "TC-ASYNC-082")
def test_timeouts_then_fallback_retrains(
    blocks_env: Store, peer: HTTPServer, mailbox, retrain_deployment
) -> None:
    from flows.llm_self_analysis import llm_self_analysis

    def slow(request):  # noqa: ANN001, ANN202 - past the block's 1 s timeout
        time.sleep(1.4)
        return Response(json.dumps(chat_completion(json.dumps(NO_RETRAIN))), 200)

    peer.expect_request("/api/trades/closed").respond_with_json(envelope(CRITICAL))
    peer.expect_request(CHAT, method="POST").respond_with_handler(slow)
    deployed_models(blocks_env, {"lstm": 0.60, "gru": 0.71})
    result = llm_self_analysis()
    assert len(llm_requests(peer)) == 3
    assert result.status == "fallback" and "after 3 attempts: timed out" in result.llm_error
    a = result.analysis
    assert a.decided_by == "fallback" and a.recommendation == "RETRAIN_LSTM"
    assert a.retrain_model_types == ["lstm"] and a.retrain_triggered
    (run,) = deployment_runs(retrain_deployment)
    assert run.parameters["params"]["model_types"] == ["lstm"]
    # admins told by e-mail and Slack that the fallback decided
    assert any("rule-based fallback" in m["Subject"] for m in mailbox.messages)
    assert any("fallback" in json.dumps(m) for m in slack_messages(peer))


@pytest.mark.tc("TC-ASYNC-054", "TC-ASYNC-055", "TC-ASYNC-099")
def test_malformed_json_retried_then_fallback_and_kill_switch(
    blocks_env: Store, peer: HTTPServer, llm_log: list[str]
) -> None:
    from flows.llm_self_analysis import llm_self_analysis

    peer.expect_request("/api/trades/closed").respond_with_json(envelope(GOOD))
    peer.expect_request(CHAT, method="POST").respond_with_json(
        chat_completion("This is not valid JSON " + "x" * 1000, 100, 10)
    )
    result = llm_self_analysis(SelfAnalysisParams(force_analysis=True, notify=False))
    assert len(llm_requests(peer)) == 3 and result.status == "fallback"
    assert "invalid answer: answer is not JSON" in result.llm_error
    assert result.analysis.recommendation == "NO_RETRAINING"  # GOOD: the rule retrains nothing
    text = "\n".join(llm_log)
    assert "raw answer (truncated): 'This is not valid JSON xxx" in text
    assert "x" * 400 not in text and LLM_KEY not in text
    costs = blocks_env.llm_costs_between(*HOUR)
    assert len(costs) == 3  # every answer received is paid for
    assert result.cost_usd == pytest.approx(3 * (100 * 30 + 10 * 60) / 1e6)

    blocks_env.set_llm_enabled(False, "daily cost $6.00 above $5.00", "daily-api-cost-report")
    off = llm_self_analysis(SelfAnalysisParams(force_analysis=True, notify=False))
    assert len(llm_requests(peer)) == 3  # nothing sent
    assert off.status == "fallback" and "kill switch" in off.llm_error
    assert "daily cost $6.00" in off.llm_error


@pytest.mark.tc("TC-ASYNC-053", "TC-ASYNC-082")
def test_client_retries_5xx_with_backoff_and_not_4xx(store: Store, peer: HTTPServer) -> None:
    import openai

    from core.exceptions import PeerRejectedError
    from integrations.llm import LLMClient

    answers = iter([(500, {"error": "overloaded"}), (503, {}), (200, None)])

    def flaky(request):  # noqa: ANN001, ANN202
        status, body = next(answers)
        body = body if body is not None else chat_completion(json.dumps(RETRAIN_LSTM), 10, 5)
        return Response(json.dumps(body), status, content_type="application/json")

    peer.expect_request(CHAT, method="POST").respond_with_handler(flaky)
    waits: list[float] = []
    client = LLMClient(
        client=openai.OpenAI(api_key=LLM_KEY, base_url=peer.url_for("/v1"), timeout=2.0),
        model="test-model",
        input_usd_per_1m=LLM_IN_USD_PER_1M,
        output_usd_per_1m=LLM_OUT_USD_PER_1M,
        store=store,
        backoff_s=0.5,
        sleep=waits.append,
    )
    rec, call = client.recommend("p", run_id="r1")
    assert rec.recommendation == "RETRAIN_LSTM" and call.attempts == 3 and waits == [0.5, 1.0]
    assert call.cost_usd == pytest.approx((10 * 30 + 5 * 60) / 1e6)
    assert LLM_KEY not in repr(client)

    peer.clear()
    peer.expect_request(CHAT, method="POST").respond_with_json({"error": "bad key"}, status=401)
    with pytest.raises(PeerRejectedError, match="HTTP 401"):
        client.recommend("p", run_id="r2")
    assert len(llm_requests(peer)) == 1
