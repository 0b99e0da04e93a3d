"""train-model through real Prefect runs (in-process on the session's test server)."""

from __future__ import annotations

import threading
import zipfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import make_candles
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.states import Scheduled

from core.exceptions import DuplicateRunError, InsufficientDataError, InvalidInputError
from core.schemas.training import TrainModelParams
from flows.train_model import train_model
from integrations.store import C, Store
from tasks.training import assert_no_active_training

FAST = dict(days_of_data=30, epochs=8, batch_size=32, learning_rate=3e-3, units=8, lookback=12)


@pytest.fixture
def env(monkeypatch, mongo_block: Store, model_store_block):
    monkeypatch.setenv("BOTAI_MIN_FREE_DISK_GB", "0.1")
    return mongo_block


def _poll_artifact(key: str, stop: threading.Event, seen: list[tuple[float, str]]) -> None:
    with get_client(sync_client=True) as client:
        while True:
            last_read = stop.is_set()  # one more read after the flow returned: its final update
            arts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )
            for a in arts:
                item = (float(a.data), a.description or "")
                if not seen or seen[-1] != item:
                    seen.append(item)
            if last_read:
                return
            stop.wait(0.1)


@pytest.mark.tc(
    "TC-ASYNC-001",
    "TC-ASYNC-007",
    "TC-ASYNC-016",
    "TC-ASYNC-019",
    "TC-ASYNC-020",
    "TC-ASYNC-021",
    "TC-ASYNC-024",
)
def test_train_model_happy_path(env: Store, model_store_block, caplog):
    env.upsert_candles("BTCUSDT", "1h", make_candles(800), source="synthetic")
    params = TrainModelParams(model_type="gru", symbol="BTCUSDT", **FAST)
    seen: list[tuple[float, str]] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_artifact, args=("train-gru-btcusdt-1h", stop, seen))
    poller.start()
    try:
        result = train_model(params)
    finally:
        stop.set()
        poller.join()
    tr = result.training_results
    assert result.status == "success" and tr.epochs_completed == 8
    assert tr.val_accuracy >= 0.60
    assert set(tr.baselines) == {"majority_class", "logistic_regression"}
    assert tr.device == "cpu" and "GPU not available, using CPU" in caplog.text
    path = Path(result.model_path)
    assert path.parent == Path(model_store_block.directory) and not zipfile.is_zipfile(path)
    assert result.model_status == "deployed"  # first model of its kind
    job = env.col(C.TRAINING_JOBS).find_one({"task_id": result.task_id})
    assert job["status"] == "completed" and len(job["epochs"]) == 8
    assert job["model_id"] == result.model_id and job["device"] == "cpu"
    # progress artifact: monotonic, reached 100 "Complete", with training stages on the way
    values = [p for p, _ in seen]
    assert values == sorted(values) and seen[-1] == (100.0, "Complete")
    assert any(d.startswith("Training epoch ") for _, d in seen)

    # an incremental training warm-starts from the deployed model, registers a candidate
    # and leaves the deployed model in place
    again = train_model(params.model_copy(update={"epochs": 2, "mode": "incremental"}))
    assert again.model_status == "candidate"
    assert env.col(C.MODELS).count_documents({"status": "deployed"}) == 1
    assert (
        env.col(C.MODELS).find_one({"model_id": again.model_id})["extra"]["mode"] == "incremental"
    )
    # warm start: the first epoch starts near the trained model's loss, not from scratch
    jobs = {j["task_id"]: j for j in env.col(C.TRAINING_JOBS).find({})}
    assert jobs[again.task_id]["epochs"][0]["loss"] < jobs[result.task_id]["epochs"][0]["loss"]


@pytest.mark.tc("TC-ASYNC-008")
def test_insufficient_data_fails_before_training(env: Store):
    env.upsert_candles("ETHUSDT", "1h", make_candles(120), source="synthetic")
    params = TrainModelParams(model_type="lstm", symbol="ETHUSDT", days_of_data=30)
    with pytest.raises(
        InsufficientDataError, match="Insufficient data: expected 720 samples, found 120"
    ):
        train_model(params)
    with pytest.raises(InvalidInputError, match="Invalid trading symbol"):
        train_model(params.model_copy(update={"symbol": "XRPUSDT"}))
    with pytest.raises(InvalidInputError, match="mode=incremental needs a deployed"):
        env.upsert_candles("ADAUSDT", "1h", make_candles(760), source="synthetic")
        train_model(TrainModelParams(symbol="ADAUSDT", mode="incremental", **FAST))
    assert env.col(C.MODELS).count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-010")
def test_duplicate_training_is_rejected_and_first_left_alone(env: Store):
    raw = TrainModelParams(model_type="lstm", symbol="SOLUSDT", **FAST).model_dump()
    with get_client(sync_client=True) as client:
        first = client.create_flow_run(
            train_model,
            parameters={"params": raw},
            state=Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=1)),
        )
    with pytest.raises(DuplicateRunError, match=r"Training already in progress for lstm\+SOLUSDT"):
        assert_no_active_training("lstm", "SOLUSDT", "1h")  # the gateway's pre-check
    with pytest.raises(DuplicateRunError, match=r"Training already in progress for lstm\+SOLUSDT"):
        train_model(TrainModelParams(**raw))  # any trigger: the flow checks at start
    assert_no_active_training("gru", "SOLUSDT", "1h")  # another key is free
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(first.id).state.type.value == "SCHEDULED"
        client.delete_flow_run(first.id)
    assert env.col(C.TRAINING_JOBS).count_documents({}) == 0


@pytest.mark.tc("TC-ASYNC-023", "TC-ASYNC-080")
def test_hard_time_limit_fails_the_run_and_registers_nothing(env: Store):
    """The hard limit is the flow's timeout_seconds (9000 s in production; 10 s here).

    The interruption reaches the training loop, which checkpoints the last completed epoch
    (when one completed in time; the loop's own test covers the checkpoint on interruption).
    """
    env.upsert_candles("BNBUSDT", "1h", make_candles(760), source="synthetic")
    params = TrainModelParams(model_type="gru", symbol="BNBUSDT", **{**FAST, "epochs": 1000})
    with pytest.raises(BaseException) as info:
        train_model.with_options(timeout_seconds=10)(params)
    assert "timed out" in str(info.value).lower() or "timeout" in type(info.value).__name__.lower()
    job = env.col(C.TRAINING_JOBS).find_one({"symbol": "BNBUSDT"})
    assert job["status"] == "failed" and job["finished_at"] is not None
    assert env.col(C.MODELS).count_documents({"symbol": "BNBUSDT"}) == 0
    if job["epochs"]:
        from core.settings import Settings

        last = job["epochs"][-1]["epoch"]
        ckpt = Settings().checkpoint_dir / f"gru_BNBUSDT_{job['task_id']}_epoch_{last}.npz"
        assert ckpt.exists(), "no checkpoint of the last completed epoch"
