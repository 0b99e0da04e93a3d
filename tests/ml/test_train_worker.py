"""train-model through a real process worker: two at a time (FIFO), cancel -> checkpoint ->
resume, and duplicate rejection while a run is in flight.

One worker (``prefect worker start``, query interval 1 s) serves a test pool whose
``ml_training`` queue has concurrency 2, as the platform's queue does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Cancelling

from core.exceptions import DuplicateRunError
from core.schemas.training import TrainModelParams
from core.settings import load_settings
from flows.train_model import train_model
from integrations.store import C, Store
from tests.ml.helpers import make_candles
from tests.peers import create_process_deployment, create_process_pool, process_worker

pytestmark = pytest.mark.tc("TC-ASYNC-004", "TC-ASYNC-005", "TC-ASYNC-006", "TC-ASYNC-010")

FAST = dict(days_of_data=30, batch_size=32, units=8, lookback=12, learning_rate=3e-3)


@pytest.fixture
def worker_pool(prefect_server: str, tmp_path: Path, monkeypatch) -> Iterator[tuple[str, str]]:
    """A process pool + ml_training queue (limit 2), a train-model deployment and a worker."""
    monkeypatch.setenv("BOTAI_MIN_FREE_DISK_GB", "0.1")
    pool = f"ml-test-{uuid.uuid4().hex[:6]}"
    create_process_pool(pool, {"ml_training": 2})
    deployment_id = create_process_deployment(
        train_model, f"train-model-{pool}", pool, "ml_training", "flows/train_model.py:train_model"
    )
    with process_worker(pool, prefect_server, tmp_path / "worker.log"):
        yield pool, str(deployment_id)


def _state_time(client, run_id, state_type: str):
    for s in client.read_flow_run_states(run_id):
        if s.type.value == state_type:
            return s.timestamp
    return None


def _wait(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.mark.tc("TC-ASYNC-004", "TC-ASYNC-005", "TC-ASYNC-006", "TC-ASYNC-010")
def test_two_at_a_time_cancel_checkpoint_resume_and_duplicate(
    worker_pool, mongo_block: Store, model_store_block
):
    _, deployment_id = worker_pool
    store = mongo_block
    # A must still be training when the test cancels it, however fast this machine is: it
    # trains the same tiny network as B and C on 4x the samples in batches of 16, so its
    # 1000 epochs take minutes (the tiny network answers SIGTERM within a batch)
    for i, (sym, bars) in enumerate((("BTCUSDT", 2900), ("ETHUSDT", 760), ("SOLUSDT", 760))):
        store.upsert_candles(sym, "1h", make_candles(bars, seed=i), source="synthetic")
    long_a = TrainModelParams(
        model_type="lstm",
        symbol="BTCUSDT",
        epochs=1000,
        **{**FAST, "days_of_data": 120, "batch_size": 16},
    )
    short_b = TrainModelParams(model_type="gru", symbol="ETHUSDT", epochs=3, **FAST)
    short_c = TrainModelParams(model_type="gru", symbol="SOLUSDT", epochs=3, **FAST)
    with get_client(sync_client=True) as client:
        runs = [
            client.create_flow_run_from_deployment(
                deployment_id, parameters={"params": p.model_dump(mode="json")}
            )
            for p in (long_a, short_b, short_c)
        ]
        a, b, c = (r.id for r in runs)

        def state(run_id):
            return client.read_flow_run(run_id).state.type.value

        # A trains (epochs recorded in training_jobs) while B runs and C waits
        _wait(
            lambda: (
                len(
                    (store.col(C.TRAINING_JOBS).find_one({"task_id": str(a)}) or {}).get(
                        "epochs", []
                    )
                )
                >= 2
            ),
            300,  # a loaded 2-core machine: process start + JAX compile + 2 epochs
            "run A to complete 2 epochs",
        )
        # a duplicate of A, from any trigger, is rejected at start; A runs on
        with pytest.raises(
            DuplicateRunError, match=r"Training already in progress for lstm\+BTCUSDT"
        ):
            train_model(long_a)
        assert state(a) == "RUNNING"

        _wait(lambda: state(b) == "COMPLETED", 300, "run B to complete")
        _wait(lambda: state(c) in ("PENDING", "RUNNING", "COMPLETED"), 30, "run C to start")
        b_end = _state_time(client, b, "COMPLETED")
        c_pending = _state_time(client, c, "PENDING")
        c_created = runs[2].created
        # C waited for a slot (2 at once) and was picked up within 5 s of B freeing one
        assert c_pending >= b_end - timedelta(seconds=0.5)
        assert (c_pending - b_end).total_seconds() < 5.0, (c_created, b_end, c_pending)
        assert (c_pending - c_created).total_seconds() > 3
        c_running = _wait(lambda: _state_time(client, c, "RUNNING"), 60, "run C to run")
        print(
            f"run C: waited {(c_pending - c_created).total_seconds():.1f} s for a slot; "
            f"Pending {(c_pending - b_end).total_seconds():.2f} s and Running "
            f"{(c_running - b_end).total_seconds():.2f} s after run B freed its slot"
        )

        # cancel A mid-training: the flow process checkpoints its last completed epoch
        client.set_flow_run_state(a, Cancelling(), force=True)
        _wait(lambda: state(a) == "CANCELLED", 180, "run A to be cancelled")
        job = store.col(C.TRAINING_JOBS).find_one({"task_id": str(a)})
        assert job["status"] == "cancelled"
        done = len(job["epochs"])
        print(f"run A: cancelled after {done} of 1000 epochs")
        ckpt = load_settings().checkpoint_dir
        saved = sorted(ckpt.glob(f"lstm_BTCUSDT_{a}_epoch_*.npz"))
        assert saved, "no checkpoint written on cancel"
        last_epoch = max(int(p.stem.rsplit("_", 1)[1]) for p in saved)
        assert last_epoch >= done >= 2
        assert store.col(C.MODELS).count_documents({"symbol": "BTCUSDT"}) == 0  # never registered
        _wait(lambda: state(c) == "COMPLETED", 300, "run C to complete")

    # resume continues at the next epoch and reaches the requested epoch count
    resumed = train_model(long_a.model_copy(update={"resume": True, "epochs": last_epoch + 2}))
    tr = resumed.training_results
    assert tr.resumed_from_epoch == last_epoch + 1
    assert tr.epochs_completed == last_epoch + 2
