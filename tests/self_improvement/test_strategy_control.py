"""emergency-strategy-disable and strategy-enable against a local (stateful) engine server."""

from __future__ import annotations

import json

import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from core.schemas.self_improvement import StrategyDisableParams, StrategyEnableParams
from integrations.store import Store
from tests.self_improvement.conftest import slack_messages

REASON = "Win rate 40% (critical threshold 45%)"


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
    assert result.pending_signals_cancelled == 5
    assert engine.enabled == {"rsi": False, "macd": False, "bollinger": True}
    assert engine.pending == {"rsi": 0, "macd": 0, "bollinger": 4}
    assert ("rsi/disable", {"reason": REASON, "by": "ops"}) in engine.bodies
    for name, n in (("rsi", 3), ("macd", 2)):
        state = blocks_env.strategy_state_get(name)
        assert (state["enabled"], state["reason"], state["by"]) == (False, REASON, "ops")
        assert state["signals_cancelled"] == n and state["disabled_at"] is not None
    # URGENT: e-mail and Slack
    assert result.notification.delivered == ["slack", "email"]
    (mail,) = mailbox.messages
    assert "URGENT" in mail["Subject"] and "rsi, macd" in mail["Subject"]
    body = "".join(
        part.get_payload(decode=True).decode()
        for part in mail.walk()
        if part.get_content_type() == "text/plain"
    )
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


@pytest.mark.tc("TC-ASYNC-065")
def test_unknown_strategy_reported_others_disabled(blocks_env: Store, peer: HTTPServer) -> None:
    from flows.emergency_strategy_disable import emergency_strategy_disable

    engine = Engine(peer, {"rsi": 1})
    result = emergency_strategy_disable(
        StrategyDisableParams(strategies=["ghost", "rsi"], reason=REASON)
    )
    assert result.status == "partial" and result.strategies_disabled == ["rsi"]
    assert "unknown strategy ghost" in result.outcomes["ghost"].error
    assert engine.enabled["rsi"] is False and blocks_env.strategy_state_get("ghost") is None
    with pytest.raises(ValueError, match="reason is required"):
        StrategyDisableParams(strategies=["rsi"], reason="  ")


@pytest.mark.tc("TC-ASYNC-040", "TC-ASYNC-059")
def test_performance_analysis_starts_disable_of_critical_strategy(
    blocks_env: Store, peer: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid
    from datetime import UTC, datetime, timedelta

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.daily_performance_analysis import daily_performance_analysis
    from tests.self_improvement.conftest import envelope

    now = datetime.now(UTC)
    trades = [
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
    peer.expect_request("/api/trades/closed").respond_with_json(envelope(trades))
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
