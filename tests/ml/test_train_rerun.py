"""train-model run again under the SAME flow-run id (what crash recovery and
`prefect flow-run retry` do), and training slots shared by every training path."""

from __future__ import annotations

import threading
import time

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.flow_engine import run_flow
from prefect.states import Scheduled

from core.schemas.training import TrainModelParams
from flows.train_model import train_model
from integrations.store import C, Store
from tests.ml.helpers import make_candles

FAST = dict(days_of_data=30, batch_size=32, learning_rate=3e-3, units=8, lookback=12)


@pytest.fixture
def env(monkeypatch, mongo_block: Store, model_store_block):
    monkeypatch.setenv("BOTAI_MIN_FREE_DISK_GB", "0.1")
    return mongo_block


@pytest.mark.tc("TC-ASYNC-006", "TC-ASYNC-077")
def test_a_rerun_under_the_same_id_resumes_from_its_own_checkpoint(env: Store):
    """The first attempt stops after epoch 1 (a soft limit of 0.1 s stands in for a crash:
    both leave a checkpoint of the last epoch). Set back to Scheduled under the same id and
    run again with the stored resume=false, it resumes at epoch 2, reaches the full epoch
    count, and the one job record counts the attempts."""
    env.upsert_candles("DOTUSDT", "1h", make_candles(760, seed=11), source="synthetic")
    first = TrainModelParams(
        model_type="gru", symbol="DOTUSDT", epochs=4, soft_time_limit_s=0.1, **FAST
    )
    with get_client(sync_client=True) as client:
        fr = client.create_flow_run(
            train_model, parameters={"params": first.model_dump(mode="json")}
        )
        state = run_flow(
            train_model, flow_run=fr, parameters={"params": first}, return_type="state"
        )
        assert state.is_failed() and "soft time limit" in state.message, state.message
        job = env.col(C.TRAINING_JOBS).find_one({"task_id": str(fr.id)})
        assert job["status"] == "failed" and job["epochs_completed"] == 1

        client.set_flow_run_state(fr.id, Scheduled(), force=True)  # as recovery does
        again = first.model_copy(update={"soft_time_limit_s": 7200.0})
        assert again.resume is False
        result = run_flow(
            train_model, flow_run=client.read_flow_run(fr.id), parameters={"params": again}
        )
        assert client.read_flow_run(fr.id).run_count == 2
    tr = result.training_results
    assert result.task_id == str(fr.id)
    assert tr.resumed_from_epoch == 2 and tr.epochs_completed == 4
    docs = list(env.col(C.TRAINING_JOBS).find({"task_id": str(fr.id)}))
    assert len(docs) == 1, "a re-run must update its job record, not add one"
    doc = docs[0]
    assert doc["status"] == "completed" and doc["error"] is None
    assert doc["attempts"] == 2 and doc["resumed_from_epoch"] == 2
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2, 3, 4]


def _stage(key: str) -> str | None:
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    return arts[0].description if arts else None


@pytest.mark.tc("TC-ASYNC-004")
def test_a_third_training_waits_for_one_of_the_two_training_slots(env: Store):
    """Two trainings hold both slots of the global limit ml-training (adaptive-retrain's
    subflow trainings take the same slots); a third waits without training, then runs."""
    from prefect.concurrency.sync import concurrency

    from tasks.training import TRAINING_LIMIT, ensure_training_limit

    ensure_training_limit(2)
    env.upsert_candles("LTCUSDT", "1h", make_candles(760, seed=12), source="synthetic")
    params = TrainModelParams(model_type="gru", symbol="LTCUSDT", epochs=2, **FAST)
    out: dict = {}
    try:
        with concurrency(TRAINING_LIMIT, occupy=2):  # the two trainings in flight
            third = threading.Thread(target=lambda: out.setdefault("r", train_model(params)))
            third.start()
            deadline = time.monotonic() + 90
            while _stage("train-gru-ltcusdt-1h") != "Waiting for a training slot":
                assert time.monotonic() < deadline and third.is_alive()
                time.sleep(0.2)
            time.sleep(3)
            job = env.col(C.TRAINING_JOBS).find_one({"symbol": "LTCUSDT"})
            assert job["epochs"] == [] and job["device"] is None  # not training
            assert third.is_alive()
            released = time.monotonic()
        third.join(300)
        result = out["r"]
        assert result.status == "success" and result.training_results.epochs_completed == 2
        print(f"third training completed {time.monotonic() - released:.1f} s after a slot freed")
    finally:
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(TRAINING_LIMIT)
