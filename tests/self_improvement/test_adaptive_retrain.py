"""adaptive-retrain with real (small) training: deploy a better model, keep the old one when
the new one does not beat it by more than the standard error (a success, said why), reject a
second run, refuse stale data, end Failed when no training succeeded."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pandas as pd
import pytest
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from core.exceptions import DataQualityError, DuplicateRunError
from core.schemas.self_improvement import AdaptiveRetrainParams
from integrations.store import C, Store
from tests.ml.helpers import make_gated_candles
from tests.self_improvement.helpers import SLACK_PATH, slack_messages

SMALL = dict(days_of_data=25, epochs=8, batch_size=32, learning_rate=3e-3, units=8, lookback=12)
#: enough bars and width for a tiny GRU/LSTM to find the gated signal
GATED = dict(days_of_data=42, epochs=10, batch_size=32, learning_rate=5e-3, units=16, lookback=12)


def make_candles(n_bars: int, end: pd.Timestamp, seed: int = 7, gate: float = 0.7) -> pd.DataFrame:
    """Hourly candles with the volume-gated signal of :func:`tests.ml.helpers.make_gated_candles`
    (a negative ``gate`` swaps the regimes), ending at ``end``."""
    return make_gated_candles(n_bars, seed=seed, gate=gate, end=str(end))


def deploy_old_regime(store: Store, model_store_block, candles: pd.DataFrame):  # noqa: ANN001, ANN201
    """Register and deploy a gru fitted on the opposite regime (momentum after quiet bars):
    on the current market it is the degraded old model. Returns (registry, record)."""
    from ml.features import prepare_dataset
    from ml.models import build_model
    from ml.registry import ModelRegistry

    ds = prepare_dataset(candles, lookback=12, horizon_bars=1)
    # whether it learned the opposite regime (then worse than chance) or not (near chance),
    # the new model beats it by several standard errors
    model = build_model("gru", 12, ds.spec.n_features, units=8, learning_rate=5e-3)
    model.fit(ds.x_train, ds.y_train, epochs=4, batch_size=32, verbose=0)
    p = model.predict(ds.x_val, verbose=0).reshape(-1)
    registry = ModelRegistry(store, model_store_block.directory, model_store_block.get_key())
    record = registry.register(
        model,
        model_type="gru",
        symbol="BTCUSDT",
        timeframe="1h",
        metrics={"val_accuracy": float(((p > 0.5) == (ds.y_val > 0.5)).mean())},
        feature_spec=ds.spec.to_dict(),
        horizon_bars=1,
        created_by="test",
    )
    return registry, registry.deploy(record.model_id, by="test")


@pytest.fixture
def env(blocks_env: Store, model_store_block, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.setenv("BOTAI_MIN_FREE_DISK_GB", "0.1")
    # the accuracy test alone: ~200 held-out hours are too few for the economic test (it is
    # covered by tests/ml/test_economics.py); these tests are about the retraining flow
    monkeypatch.setenv("BOTAI_DEPLOY_RULE", "accuracy")
    return blocks_env


@pytest.mark.tc("TC-ASYNC-004", "TC-ASYNC-056", "TC-ASYNC-057", "TC-ASYNC-063")
def test_better_deploys_second_rejected_worse_stays_candidate(
    env: Store, model_store_block, peer: HTTPServer
) -> None:
    import keras

    from flows.adaptive_retrain import adaptive_retrain

    keras.utils.set_random_seed(2)
    now = pd.Timestamp.now(tz="UTC").floor("h")
    candles = make_candles(1100, end=now)
    env.upsert_candles("BTCUSDT", "1h", candles, source="synthetic")
    old_regime = make_candles(800, end=now - pd.Timedelta(days=60), seed=3, gate=-0.7)
    registry, old = deploy_old_regime(env, model_store_block, old_regime)

    # a GRU: a tiny LSTM needs more epochs to find the gated signal
    params = AdaptiveRetrainParams(model_types=["gru"], reason="GRU accuracy dropped", **GATED)
    # the first run's Slack notification (sent before it releases its lock) is answered only
    # once the second run was refused: however fast the first trains, it still holds the lock
    refused = threading.Event()

    def slack_after_refusal(_request: Request) -> Response:
        refused.wait(60)
        return Response("ok")

    peer.expect_oneshot_request(SLACK_PATH, method="POST").respond_with_handler(slack_after_refusal)
    out: dict = {}
    first = threading.Thread(target=lambda: out.setdefault("r", adaptive_retrain(params)))
    first.start()
    try:
        deadline = time.monotonic() + 60
        while not env.col(C.LOCKS).find_one({"_id": "adaptive-retrain"}):
            assert time.monotonic() < deadline and first.is_alive()
            time.sleep(0.05)
        with pytest.raises(DuplicateRunError, match="Adaptive retraining already in progress"):
            adaptive_retrain(params)
    finally:
        refused.set()
        first.join()

    r = out["r"]
    m = r.models["gru"]
    assert r.status == "success" and m.old_model_id == old.model_id
    print(f"old model {m.old_accuracy:.3f}, new model {m.new_accuracy:.3f}: {m.reason}")
    assert m.deployed is True and m.outcome == "deployed", m.reason
    rows = {c.name: c for c in m.decision.comparisons}
    assert rows["deployed_model"].model_id == old.model_id
    assert all(c.difference > c.standard_error for c in rows.values())
    assert m.reason.startswith(f"deployed: accuracy {m.new_accuracy:.3f}")
    assert registry.get(old.model_id).status == "retired"
    assert registry.get(m.model_id).status == "deployed"
    # both scored on the newest bars, held out before training (the newest has no outcome yet)
    assert m.window_end == (now - pd.Timedelta(hours=1)).to_pydatetime()
    assert m.window_samples == round(1008 * 0.2) - 1
    (hist,) = env.improvement.retrain_history_find({"task_id": r.task_id})
    assert hist["models"]["gru"]["deployed"] and hist["days_of_data"] == 42
    text = str(slack_messages(peer))
    assert f"old {m.old_accuracy} -> new {m.new_accuracy}" in text
    assert env.col(C.LOCKS).count_documents({}) == 0  # released

    # a barely trained model must beat the deployed one by 0.30: the old one stays, which is
    # a success with an explicit outcome, not a failure
    worse = adaptive_retrain(
        params.model_copy(update={"epochs": 1, "learning_rate": 1e-5, "min_improvement": 0.3})
    )
    w = worse.models["gru"]
    assert worse.status == "success" and w.outcome == "kept_old" and w.deployed is False
    assert w.old_model_id == m.model_id
    assert w.reason.startswith("not deployed, stays a candidate (the deployed model stays)")
    assert f"accuracy {w.new_accuracy:.3f} vs" in w.reason and "standard error" in w.reason
    assert registry.get(w.model_id).status == "candidate"
    assert registry.get(m.model_id).status == "deployed"


@pytest.mark.tc("TC-ASYNC-008", "TC-ASYNC-057", "TC-ASYNC-062")
def test_stale_data_and_nothing_to_retrain_fail_clearly(env: Store) -> None:
    from flows.adaptive_retrain import adaptive_retrain

    old_end = pd.Timestamp(datetime(2026, 11, 1, tzinfo=UTC))
    env.upsert_candles("ETHUSDT", "1h", make_candles(700, end=old_end), source="synthetic")
    with pytest.raises(DataQualityError, match=r"Stale data: the newest ETHUSDT 1h candle"):
        adaptive_retrain(AdaptiveRetrainParams(model_types=["gru"], symbols=["ETHUSDT"], **SMALL))
    assert env.col(C.TRAINING_JOBS).count_documents({}) == 0
    assert env.col(C.LOCKS).count_documents({}) == 0
    with pytest.raises(Exception, match="No deployed gru 1h model to retrain: pass symbols"):
        adaptive_retrain(AdaptiveRetrainParams(model_types=["gru"], **SMALL))
    with pytest.raises(Exception, match="model_types must be among"):
        AdaptiveRetrainParams(model_types=["cnn"])


@pytest.mark.tc("TC-ASYNC-058")
def test_a_retrain_whose_every_training_failed_ends_failed(env: Store) -> None:
    """Fresh but too short data: every training fails, so the run did not do its work: it
    ends Failed with the reasons (history saved, lock released), not Completed."""
    from flows.adaptive_retrain import adaptive_retrain

    now = pd.Timestamp.now(tz="UTC").floor("h")
    env.upsert_candles("SOLUSDT", "1h", make_candles(300, end=now), source="synthetic")
    params = AdaptiveRetrainParams(model_types=["gru"], symbols=["SOLUSDT"], **SMALL)
    state = adaptive_retrain(params, return_state=True)
    assert state.is_failed(), state
    assert "every training failed" in state.message and "Insufficient data" in state.message
    (hist,) = env.improvement.retrain_history_find({})
    assert hist["status"] == "failed" and "gru" in hist["errors"]
    assert env.col(C.LOCKS).count_documents({}) == 0
