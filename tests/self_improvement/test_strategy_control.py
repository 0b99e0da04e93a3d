"""emergency-strategy-disable and strategy-enable against a local (stateful) engine server."""

from __future__ import annotations

import json
import threading
import time

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from core.exceptions import JobFailedError
from core.schemas.self_improvement import StrategyDisableParams, StrategyEnableParams
from integrations.store import Store
from tests.peers import envelope
from tests.self_improvement.helpers import slack_messages

REASON = "Win rate 40% (critical threshold 45%)"


def _text(mail) -> str:  # noqa: ANN001
    return "".join(
        part.get_payload(decode=True).decode()
        for part in mail.walk()
        if part.get_content_type() == "text/plain"
    )


class Engine:
    """A fake trading engine holding strategies and their pending signals."""

    def __init__(self, server: HTTPServer, strategies: dict[str, int]) -> None:
        self.enabled = {name: True for name in strategies}
        self.pending = dict(strategies)
        self.bodies: list[tuple[str, dict]] = []
        for name in strategies:
            for action in ("disable", "enable", "signals/cancel"):
                server.expect_request(
                    f"/api/strategies/{name}/{action}", method="POST"
                ).respond_with_handler(self.handler(name, action))
        server.expect_request("/api/strategies/ghost/disable", method="POST").respond_with_json(
            {"success": False, "data": None, "error": "unknown strategy ghost"}, status=404
        )

    def handler(self, name: str, action: str):  # noqa: ANN201
        def handle(request: Request) -> Response:
            self.bodies.append((f"{name}/{action}", request.get_json()))
            data: dict = {"name": name}
            if action == "disable":
                self.enabled[name] = False
                data["enabled"] = False
            elif action == "enable":
                self.enabled[name] = True
                data["enabled"] = True
            else:
                data["cancelled"], self.pending[name] = self.pending[name], 0
            body = {"success": True, "data": data, "error": None}
            return Response(json.dumps(body), 200, content_type="application/json")

        return handle


@pytest.mark.tc("TC-ASYNC-059", "TC-ASYNC-064", "TC-ASYNC-065")
def test_disable_two_then_reenable_after_review(
    blocks_env: Store, peer: HTTPServer, mailbox
) -> None:
    from flows.emergency_strategy_disable import emergency_strategy_disable
    from flows.strategy_enable import strategy_enable

    engine = Engine(peer, {"rsi": 3, "macd": 2, "bollinger": 4})
    result = emergency_strategy_disable(
        StrategyDisableParams(strategies=["rsi", "macd"], reason=REASON, by="ops")
    )
    assert result.status == "success" and result.strategies_disabled == ["rsi", "macd"]
    assert [o.outcome for o in result.outcomes.values()] == ["disabled", "disabled"]
    assert all(o.recorded for o in result.outcomes.values())
    assert result.pending_signals_cancelled == 5
    assert engine.enabled == {"rsi": False, "macd": False, "bollinger": True}
    assert engine.pending == {"rsi": 0, "macd": 0, "bollinger": 4}
    assert ("rsi/disable", {"reason": REASON, "by": "ops"}) in engine.bodies
    for name, n in (("rsi", 3), ("macd", 2)):
        state = blocks_env.strategy_state_get(name)
        assert (state["enabled"], state["reason"], state["by"]) == (False, REASON, "ops")
        assert state["signals_cancelled"] == n and state["disabled_at"] is not None
    # URGENT alert first (e-mail and Slack), then the outcome
    assert result.alert.delivered == ["slack", "email"]
    assert result.notification.delivered == ["slack", "email"]
    alert, outcome = (str(m["Subject"]).replace("\r\n", "") for m in mailbox.messages)
    assert "URGENT" in alert and "disabling strategy rsi, macd" in alert
    assert "URGENT" in outcome and "SUCCESS: rsi, macd disabled" in outcome
    body = _text(mailbox.messages[1])
    assert REASON in body and "rsi: disabled, 3 pending signals cancelled" in body
    assert any("URGENT" in json.dumps(m) for m in slack_messages(peer))

    # re-enabling needs a reviewer and a note
    with pytest.raises(ValueError, match="reviewer is required"):
        StrategyEnableParams(strategy="rsi", reviewer=" ", note="checked")
    with pytest.raises(ValueError, match="note is required"):
        StrategyEnableParams(strategy="rsi", reviewer="alice", note="")
    done = strategy_enable(
        StrategyEnableParams(strategy="rsi", reviewer="alice", note="RSI period retuned")
    )
    assert done.status == "success" and engine.enabled["rsi"] is True
    assert ("rsi/enable", {"reviewer": "alice", "note": "RSI period retuned"}) in engine.bodies
    state = blocks_env.strategy_state_get("rsi")
    assert state["enabled"] is True and state["reviewed_by"] == "alice"
    assert state["review_note"] == "RSI period retuned" and state["reason"] == REASON
    assert [h["action"] for h in state["history"]] == ["disable", "enable"]
    assert blocks_env.strategy_state_get("macd")["enabled"] is False


class Hanging:
    """Engine endpoints that accept the request and never answer (until released)."""

    def __init__(self, server: HTTPServer, paths: list[str]) -> None:
        self.release = threading.Event()
        self.calls: list[tuple[float, str]] = []
        for path in paths:
            server.expect_request(path, method="POST").respond_with_handler(self.handler(path))

    def handler(self, path: str):  # noqa: ANN201
        def handle(_request: Request) -> Response:
            self.calls.append((time.monotonic(), path))
            self.release.wait(120)
            return Response("{}", 504, content_type="application/json")

        return handle


@pytest.mark.tc("TC-ASYNC-059", "TC-ASYNC-065", "TC-ASYNC-082")
def test_hanging_engine_alert_first_bounded_run_failed_with_outcomes(
    blocks_env: Store, peer: HTTPServer, mailbox
) -> None:
    """The engine hangs on rsi's disable and on bollinger's signal cancel: the URGENT alert
    reaches the SMTP mailbox and Slack within 30 s, the run ends Failed within its deadline
    plus a margin, and each strategy's outcome says what was done."""
    from flows.emergency_strategy_disable import emergency_strategy_disable

    engine = Engine(peer, {"macd": 2})
    peer.expect_request("/api/strategies/bollinger/disable", method="POST").respond_with_json(
        envelope({"name": "bollinger", "enabled": False})
    )
    hang = Hanging(
        peer, ["/api/strategies/rsi/disable", "/api/strategies/bollinger/signals/cancel"]
    )
    deadline_s = 8.0
    params = StrategyDisableParams(
        strategies=["rsi", "macd", "bollinger"], reason=REASON, deadline_s=deadline_s
    )
    box: dict = {}
    t0 = time.monotonic()
    runner = threading.Thread(
        target=lambda: box.update(
            state=emergency_strategy_disable(params, return_state=True), end=time.monotonic()
        )
    )
    runner.start()
    try:
        alert_at = None
        while time.monotonic() - t0 < 60 and runner.is_alive():
            if mailbox.messages and any("URGENT" in json.dumps(m) for m in slack_messages(peer)):
                alert_at = time.monotonic() - t0
                break
            time.sleep(0.05)
        runner.join(timeout=120)
    finally:
        hang.release.set()
    assert alert_at is not None and alert_at < 30, alert_at
    first_engine_call = min(t for t, _ in hang.calls) - t0 if hang.calls else None
    alert_subject = str(mailbox.messages[0]["Subject"]).replace("\r\n", "")
    assert "disabling strategy rsi, macd, bollinger" in alert_subject
    assert first_engine_call is not None and alert_at <= first_engine_call + 1.0
    state = box["state"]
    elapsed = box["end"] - t0
    # bounded: the deadline plus block loads, two notifications, records and the artifact
    assert elapsed < deadline_s + 25, elapsed
    assert state.is_failed(), state
    assert "Emergency strategy disable partial: 1 of 3 strategies fully disabled" in state.message
    result = state.result(raise_on_failure=False).result
    rsi, macd, boll = (result.outcomes[n] for n in ("rsi", "macd", "bollinger"))
    assert rsi.outcome == "not_disabled" and "deadline reached" in rsi.error
    assert rsi.elapsed_s <= deadline_s + 1 and not rsi.recorded
    assert (macd.outcome, macd.signals_cancelled, macd.recorded) == ("disabled", 2, True)
    assert boll.outcome == "disabled_signals_not_cancelled" and boll.recorded
    assert "cancel pending signals" in boll.error and boll.elapsed_s <= deadline_s + 1
    assert engine.enabled == {"macd": False}
    assert blocks_env.strategy_state_get("rsi") is None
    assert blocks_env.strategy_state_get("bollinger")["enabled"] is False
    outcome_mail = _text(mailbox.messages[-1])
    assert "rsi: NOT disabled" in outcome_mail
    assert "bollinger: disabled, pending signals NOT cancelled" in outcome_mail


@pytest.mark.tc("TC-ASYNC-059", "TC-ASYNC-065")
def test_unknown_strategy_reported_others_disabled_run_failed(
    blocks_env: Store, peer: HTTPServer
) -> None:
    from flows.emergency_strategy_disable import emergency_strategy_disable

    engine = Engine(peer, {"rsi": 1})
    state = emergency_strategy_disable(
        StrategyDisableParams(strategies=["ghost", "rsi"], reason=REASON), return_state=True
    )
    # a job that did not do all its work ends Failed (the gateway says FAILURE) ...
    assert state.is_failed(), state
    assert "Emergency strategy disable partial: 1 of 2 strategies fully disabled" in state.message
    assert "ghost: NOT disabled" in state.message and "unknown strategy ghost" in state.message
    assert "rsi: disabled, 1 pending signals cancelled" in state.message
    # ... with what was done recorded and the per-strategy outcomes explicit
    err = state.result(raise_on_failure=False)
    assert isinstance(err, JobFailedError)
    result = err.result
    assert result.status == "partial" and result.strategies_disabled == ["rsi"]
    assert result.outcomes["ghost"].outcome == "not_disabled"
    assert "unknown strategy ghost" in result.outcomes["ghost"].error
    assert result.outcomes["rsi"].outcome == "disabled" and result.outcomes["rsi"].recorded
    assert engine.enabled["rsi"] is False and blocks_env.strategy_state_get("ghost") is None
    assert blocks_env.strategy_state_get("rsi")["enabled"] is False
    with pytest.raises(ValueError, match="reason is required"):
        StrategyDisableParams(strategies=["rsi"], reason="  ")


def _mixed_trades() -> list[dict]:
    """rsi wins 4 of 10 (40 %, critical), macd 8 of 10."""
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    return [
        {
            "trade_id": f"{s}{i}",
            "strategy": s,
            "symbol": "BTCUSDT",
            "profit_pct": 1.0 if i < wins else -1.0,
            "closed_at": (now - timedelta(hours=i + 1)).isoformat(),
        }
        for s, wins in (("rsi", 4), ("macd", 8))
        for i in range(10)
    ]


@pytest.mark.tc("TC-ASYNC-059", "TC-ASYNC-050")
def test_performance_analysis_fails_when_disable_cannot_start(
    blocks_env: Store, peer: HTTPServer, mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No emergency-disable deployment: the analysis does not complete as if it had acted;
    it alerts, then ends Failed naming the strategy left enabled."""
    from flows.daily_performance_analysis import daily_performance_analysis

    peer.expect_request("/api/trades/closed").respond_with_json(envelope(_mixed_trades()))
    missing = "emergency-strategy-disable/nobody-deployed-this"
    monkeypatch.setenv("BOTAI_EMERGENCY_DISABLE_DEPLOYMENT", missing)
    state = daily_performance_analysis(return_state=True)
    assert state.is_failed(), state
    assert f"Deployment {missing!r} is not deployed: rsi NOT disabled" in state.message
    result = state.result(raise_on_failure=False).result
    assert result.strategies_to_disable == {"rsi": REASON}
    assert result.strategy_disable_run_id is None
    assert "Emergency disable NOT started" in result.strategy_disable_note
    (note,) = result.notifications
    assert note.level == "critical" and note.delivered == ["slack", "email"]
    assert "rsi NOT disabled" in _text(mailbox.messages[-1])


@pytest.mark.tc("TC-ASYNC-059")
def test_performance_analysis_starts_disable_of_critical_strategy(
    blocks_env: Store, peer: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.daily_performance_analysis import daily_performance_analysis

    peer.expect_request("/api/trades/closed").respond_with_json(envelope(_mixed_trades()))
    name = f"emergency-strategy-disable-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("BOTAI_EMERGENCY_DISABLE_DEPLOYMENT", f"emergency-strategy-disable/{name}")
    with get_client(sync_client=True) as client:
        dep_id = client.create_deployment(
            flow_id=client.create_flow_from_name("emergency-strategy-disable"), name=name
        )
        try:
            result = daily_performance_analysis()
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[dep_id]))
            )
        finally:
            client.delete_deployment(dep_id)
    assert result.per_strategy["rsi"].win_rate == 40.0
    (run,) = runs
    assert run.parameters["params"]["strategies"] == ["rsi"]
    assert run.parameters["params"]["reason"] == REASON
    assert any(f"run {run.id}" in r for r in result.reasons)
    assert result.strategy_disable_run_id == str(run.id)
