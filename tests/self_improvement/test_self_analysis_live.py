"""llm-self-analysis and daily-performance-analysis read the deployed models' live record
beside their held-out accuracy (TC-ASYNC-051, TC-ASYNC-040)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from pytest_httpserver import HTTPServer

from core.schemas.live import ScorePredictionsParams
from core.schemas.monitoring import PerformanceParameters
from integrations.store import Store
from ml.scoring import score_entry
from tasks.scoring import judge_models
from tests.peers import envelope
from tests.self_improvement.helpers import chat_completion, llm_requests
from tests.self_improvement.test_self_analysis import CHAT, GOOD, NO_RETRAIN, deployed_models


def _coin_flip_record(store: Store, model_id: str, n: int = 2100) -> None:
    """``n`` hourly signals of ``model_id`` whose P(up) carries no information, scored as
    score-predictions scores them, then judged (live figures stored)."""
    rng = np.random.default_rng(3)
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=n + 2)
    price = 100.0
    entries = []
    for i in range(n):
        origin = start + timedelta(hours=i)
        p = float(rng.uniform(0.3, 0.7))
        outcome = price * float(np.exp(rng.normal(0, 0.01)))
        entry = {
            "entry_id": f"bulk-{i}:BTCUSDT:signal:1",
            "task_id": f"bulk-{i}",
            "kind": "signal",
            "model_id": model_id,
            "model_version": 1,
            "model_type": "lstm",
            "model_horizon_bars": 1,
            "symbol": "BTCUSDT",
            "timeframe": "1h",
            "made_at": origin,
            "created_at": origin,
            "origin_time": origin,
            "origin_price": price,
            "hour": 1,
            "target_time": origin + timedelta(hours=1),
            "signal": "BUY" if p > 0.575 else "SELL" if p < 0.425 else "HOLD",
            "confidence": abs(2 * p - 1),
            "up_probability": p,
            "scored": False,
        }
        entries.append(score_entry(entry, outcome, datetime.now(UTC)))
        price = outcome
    store.ledger.entries_record(entries)
    now = datetime.now(UTC)
    judge_models.fn(store, now, ScorePredictionsParams(), now - timedelta(days=90))


@pytest.mark.tc("TC-ASYNC-051", "TC-ASYNC-040")
def test_a_decayed_model_is_analysed_though_trading_and_accuracy_look_fine(
    blocks_env: Store, peer: HTTPServer
) -> None:
    from flows.daily_performance_analysis import daily_performance_analysis
    from flows.llm_self_analysis import llm_self_analysis

    peer.expect_request("/api/trades/closed").respond_with_json(envelope(GOOD))
    peer.expect_request(CHAT, method="POST").respond_with_json(
        chat_completion(json.dumps(NO_RETRAIN), 500, 200)
    )
    deployed_models(blocks_env, {"lstm": 0.72, "gru": 0.70})
    lstm = blocks_env.deployed_model_docs(model_type="lstm")[0]["model_id"]
    _coin_flip_record(blocks_env, lstm)

    result = llm_self_analysis()  # GOOD trading, every held-out accuracy above 0.65

    assert result.status == "success"  # not skipped: the live record says the lstm decayed
    (live,) = result.model_live
    assert live.model_id == lstm and live.decayed and live.direction_scored == 2000
    assert abs(live.hit_rate - 0.5) < 0.04 and "no edge" in live.reasons[0]
    (req,) = llm_requests(peer)
    prompt = req["messages"][1]["content"]
    assert "live record" in prompt and lstm in prompt and '"decayed": true' in prompt
    history = blocks_env.improvement.llm_analyses_find({"task_id": result.task_id})
    assert history[0]["model_live"][0]["model_id"] == lstm

    perf = daily_performance_analysis(PerformanceParameters(notify=False))
    assert perf.status == "GOOD" and [m.model_id for m in perf.model_live] == [lstm]
    assert any(r.startswith(f"model {lstm} (BTCUSDT) decayed") for r in perf.reasons)
