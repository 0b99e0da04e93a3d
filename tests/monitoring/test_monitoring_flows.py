"""The four monitoring flows end to end on the session's Prefect server: engine API, Slack
webhook and SMTP are real local servers; MongoDB is the test's database."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from pytest_httpserver import HTTPServer

from core.environment import REPO_ROOT
from integrations.store import C, Store
from tests.monitoring.helpers import slack_messages
from tests.peers import Mailbox, envelope, free_port

pytestmark = pytest.mark.usefixtures("channel_blocks")


@pytest.mark.tc("TC-ASYNC-100", "TC-ASYNC-101")
def test_deployments_schedules_and_queues() -> None:
    deps = {
        d["name"]: d
        for d in yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())["deployments"]
    }
    expected = {
        "system-health-check": "*/15 * * * *",
        "daily-performance-analysis": "0 1 * * *",
        "daily-portfolio-report": "0 8 * * *",
        "daily-api-cost-report": "0 9 * * *",
    }
    for name, cron in expected.items():
        d = deps[name]
        assert d["work_pool"] == {"name": "botai-process", "work_queue_name": "scheduled"}
        assert d["schedules"] == [{"cron": cron, "timezone": "UTC"}]
        module, func = d["entrypoint"].split(":")
        assert module == f"flows/{name.replace('-', '_')}.py"
        mod = __import__(module.removesuffix(".py").replace("/", "."), fromlist=[func])
        assert getattr(mod, func).name == name


@pytest.mark.tc("TC-ASYNC-043", "TC-ASYNC-044", "TC-ASYNC-045")
def test_health_flow_everything_down_finishes_in_time(
    hanging_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from blocks import MongoDBBlock
    from flows.system_health_check import system_health_check

    MongoDBBlock(uri=f"mongodb://127.0.0.1:{free_port()}", database="x").save(
        "mongodb", overwrite=True
    )
    monkeypatch.setenv("BOTAI_STATE_DIR", str(tmp_path))
    cfg = tmp_path / "checks.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "checks": [  # default timeouts (8 s each, 25 s deadline)
                    {
                        "name": "Rust Core Engine",
                        "kind": "http",
                        "target": f"http://{hanging_address}/api/health",
                    },
                    {"name": "Redis", "kind": "redis", "target": hanging_address},
                    {"name": "RabbitMQ", "kind": "amqp", "target": f"127.0.0.1:{free_port()}"},
                    {"name": "MongoDB", "kind": "mongodb"},
                    {
                        "name": "Prefect API",
                        "kind": "prefect_api",
                        "target_setting": "prefect_api_url",
                    },
                    {
                        "name": "Frontend Dashboard",
                        "kind": "http",
                        "target_setting": "frontend_url",
                    },
                ]
            }
        )
    )
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    live, idle = f"mon-live-{uuid.uuid4().hex[:6]}", f"mon-idle-{uuid.uuid4().hex[:6]}"
    with get_client(sync_client=True) as client:
        for pool in (live, idle):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        client.send_worker_heartbeat(live, "worker-1", heartbeat_interval_seconds=30)
    checks = yaml.safe_load(cfg.read_text())
    checks["checks"] += [
        {
            "name": f"Worker {p}",
            "kind": "prefect_worker",
            "target_setting": "prefect_api_url",
            "work_pool": p,
        }
        for p in (live, idle)
    ]
    cfg.write_text(yaml.safe_dump(checks))
    t0 = time.monotonic()
    result = system_health_check({"config_path": str(cfg)})
    elapsed = time.monotonic() - t0
    assert elapsed < 30, elapsed
    report = result.health_report
    assert result.status == "success"
    s = report.services
    assert s["Prefect API"].status == "healthy"
    assert s["Frontend Dashboard"].status == "unknown"
    assert "Frontend Dashboard" in report.unchecked
    assert report.summary.startswith(f"{report.checked_count} of {len(s)} checked")
    assert {s[n].status for n in ("Rust Core Engine", "Redis", "RabbitMQ", "MongoDB")} == {
        "failing"
    }
    assert s["Rust Core Engine"].error == "timeout after 8s"
    assert s[f"Worker {live}"].status == "healthy"
    assert s[f"Worker {idle}"].error == f"no live worker in work pool {idle!r}"
    with get_client(sync_client=True) as client:
        for pool in (live, idle):
            client.delete_work_pool(pool)
    assert report.saved_to == str(tmp_path / "health_reports.jsonl")


def _trades(wins: int, losses: int, *, when: datetime) -> list[dict]:
    out = []
    for i in range(wins + losses):
        win = i < wins
        out.append(
            {
                "trade_id": f"t{i}",
                "strategy": "rsi" if i % 2 else "macd",
                "symbol": "BTCUSDT",
                "profit_pct": (1.0 + 0.1 * (i % 3)) if win else -(1.0 + 0.1 * (i % 2)),
                "pnl_usd": 10.0 if win else -10.0,
                "closed_at": (when - timedelta(hours=i)).isoformat(),
            }
        )
    return out


PORTFOLIO = {
    "balance": 10542.75,
    "initial_balance": 10000.0,
    "total_return_percent": 5.43,
    "total_trades": 47,
    "winning_trades": 32,
    "losing_trades": 15,
    "average_profit_per_trade": 1.87,
    "strategy_breakdown": {
        "rsi": {"trades": 20, "win_rate": 70.0},
        "macd": {"trades": 15, "win_rate": 66.7},
    },
}


@pytest.mark.tc("TC-ASYNC-036")
def test_portfolio_report_saved_and_sent(
    peer: HTTPServer, mailbox: Mailbox, mongo_block: Store
) -> None:
    from flows.daily_portfolio_report import daily_portfolio_report

    today = datetime.now(UTC)
    peer.expect_request("/api/portfolio").respond_with_json(envelope(PORTFOLIO))
    peer.expect_request("/api/trades/closed").respond_with_json(
        envelope(_trades(2, 1, when=today.replace(hour=23, minute=0)))
    )
    result = daily_portfolio_report({"report_date": today.date().isoformat()})
    r = result.report
    assert (r.balance, r.total_trades, r.winning_trades, r.losing_trades) == (10542.75, 47, 32, 15)
    assert r.win_rate == pytest.approx(68.09, abs=0.01) and r.avg_profit_per_trade == 1.87
    assert {"rsi", "macd"} <= set(r.strategies) and r.trades_today == 3 and not r.no_trades

    assert mongo_block.monitoring.portfolio_reports_find(r.report_date)[0]["win_rate"] == 68.09
    assert result.notifications[0].delivered == ["slack", "email"]
    assert "Balance: $10,542.75" in mailbox.messages[0].get_payload()
    assert "68.09%" in slack_messages(peer)[0]["text"]


@pytest.mark.tc("TC-ASYNC-046", "TC-ASYNC-047")
def test_portfolio_without_trades_and_email_down(peer: HTTPServer, mongo_block: Store) -> None:
    from blocks import SMTPBlock
    from flows.daily_portfolio_report import daily_portfolio_report

    SMTPBlock(
        host="127.0.0.1",
        port=free_port(),
        security="none",
        sender="b@x.org",
        recipients=["a@x.org"],
    ).save("smtp", overwrite=True)
    peer.expect_request("/api/portfolio").respond_with_json(
        envelope({**PORTFOLIO, "strategy_breakdown": {}})
    )
    peer.expect_request("/api/trades/closed").respond_with_json(envelope([]))
    result = daily_portfolio_report({"report_date": "2026-11-28"})
    assert result.status == "success" and result.report.no_trades
    assert "No trades closed on 2026-11-28" in result.report.summary
    n = result.notifications[0]
    assert n.delivered == ["slack"] and "unreachable" in n.failed["email"]
    (alert,) = mongo_block.monitoring.alerts_find()
    assert alert["failed"]["email"].startswith("SMTP 127.0.0.1")


@pytest.mark.tc("TC-ASYNC-039")
def test_cost_report_critical_switches_llm_off(
    peer: HTTPServer, mailbox: Mailbox, mongo_block: Store
) -> None:
    from flows.daily_api_cost_report import daily_api_cost_report

    day = datetime(2026, 11, 27, 12, tzinfo=UTC)
    for cost in (4.0, 2.5):
        mongo_block.record_llm_cost(
            run_id="r1",
            model="gpt-4o",
            prompt_tokens=10_000,
            completion_tokens=2_000,
            cost_usd=cost,
            created_at=day,
        )
    mongo_block.record_llm_cost(
        run_id="r0",
        model="gpt-4o",
        prompt_tokens=1,
        completion_tokens=1,
        cost_usd=1.0,
        created_at=day - timedelta(days=5),
    )
    mongo_block.record_llm_cost(
        run_id="r2",
        model="gpt-4o",
        prompt_tokens=1,
        completion_tokens=1,
        cost_usd=9.0,
        created_at=day + timedelta(days=1),
    )  # not in the day
    assert mongo_block.llm_enabled()
    result = daily_api_cost_report({"report_date": "2026-11-27"})
    r = result.report
    assert (r.daily_cost_usd, r.month_to_date_usd) == (6.5, 7.5)
    assert r.monthly_projection_usd == round(7.5 / 27 * 30, 2)
    assert r.level == "critical" and r.llm_disabled and "exceeds $5.00" in r.alerts[0]
    assert not mongo_block.llm_enabled()
    assert mongo_block.llm_settings()["by"] == "daily-api-cost-report"
    assert mongo_block.monitoring.api_cost_reports_find("2026-11-27")[0]["daily_cost_usd"] == 6.5
    assert result.notifications[0].delivered == ["slack", "email"]
    assert "URGENT" in mailbox.messages[0]["Subject"]


@pytest.mark.tc("TC-ASYNC-037", "TC-ASYNC-049")
def test_cost_report_within_budget(peer: HTTPServer, mailbox: Mailbox, mongo_block: Store) -> None:
    from flows.daily_api_cost_report import daily_api_cost_report

    for d in range(1, 16):
        mongo_block.record_llm_cost(
            run_id=None,
            model="gpt-4o-mini",
            prompt_tokens=1,
            completion_tokens=1,
            cost_usd=1.87,
            created_at=datetime(2026, 11, d, 9, tzinfo=UTC),
        )
    r = daily_api_cost_report({"report_date": "2026-11-15"}).report
    assert (r.daily_cost_usd, r.monthly_projection_usd, r.alerts) == (1.87, 56.10, [])
    assert mongo_block.llm_enabled() and slack_messages(peer) == [] and mailbox.messages == []
    assert mongo_block.col(C.API_COST_HISTORY).count_documents({}) == 1


@pytest.fixture
def self_analysis_deployment(prefect_server: str, monkeypatch: pytest.MonkeyPatch):
    """A deployment the performance flow can start (unique name, deleted afterwards)."""
    from prefect.client.orchestration import get_client

    flow_name = f"llm-self-analysis-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("BOTAI_SELF_ANALYSIS_DEPLOYMENT", f"{flow_name}/{flow_name}")
    with get_client(sync_client=True) as client:
        dep_id = client.create_deployment(
            flow_id=client.create_flow_from_name(flow_name), name=flow_name
        )
        yield dep_id
        client.delete_deployment(dep_id)


@pytest.mark.tc("TC-ASYNC-041")
def test_performance_critical_triggers_self_analysis(
    peer: HTTPServer, mailbox: Mailbox, mongo_block: Store, self_analysis_deployment
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from flows.daily_performance_analysis import daily_performance_analysis

    peer.expect_request("/api/trades/closed").respond_with_json(
        envelope(_trades(13, 12, when=datetime.now(UTC)))
    )
    result = daily_performance_analysis()
    assert result.status == "CRITICAL" and result.metrics.win_rate == 52.0
    assert result.gpt4_analysis_triggered is True
    assert set(result.per_strategy) == {"rsi", "macd"}
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[self_analysis_deployment])
            )
        )
    assert [str(r.id) for r in runs] == [result.analysis_flow_run_id]
    assert result.notifications[0].delivered == ["slack", "email"]
    assert "win rate 52.00% below 55%" in mailbox.messages[0]["Subject"]


@pytest.mark.tc("TC-ASYNC-041", "TC-ASYNC-050")
def test_performance_not_deployed_and_insufficient_data(
    peer: HTTPServer, mongo_block: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.daily_performance_analysis import daily_performance_analysis

    monkeypatch.setenv("BOTAI_SELF_ANALYSIS_DEPLOYMENT", "nobody-deployed-this/x")
    now = datetime.now(UTC)
    old = _trades(0, 5, when=now - timedelta(days=9))  # outside the 7-day window
    peer.expect_oneshot_request("/api/trades/closed").respond_with_json(
        envelope(_trades(13, 12, when=now) + old)
    )
    r = daily_performance_analysis({"notify": False})
    assert r.status == "CRITICAL" and r.metrics.trades == 25 and not r.gpt4_analysis_triggered
    assert (
        r.analysis_note
        == "Deployment 'nobody-deployed-this/x' is not deployed: self-analysis not triggered"
    )

    peer.expect_oneshot_request("/api/trades/closed").respond_with_json(
        envelope(_trades(3, 1, when=now) + [{"trade_id": "broken", "closed_at": now.isoformat()}])
    )
    r = daily_performance_analysis()
    assert r.status == "INSUFFICIENT_DATA" and r.metrics.trades == 4
    assert not r.gpt4_analysis_triggered and r.notifications == []
