"""Results, job records and dead letters: one document per task, whatever is repeated."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from integrations.store import C, DuplicateKeyStoreError, Store


@pytest.mark.tc("TC-ASYNC-066", "TC-ASYNC-067", "TC-ASYNC-077")
def test_repeated_result_writes_leave_one_document_per_task(store: Store) -> None:
    for n in range(3):  # a retried write, then a re-run of the same flow run
        store.backtest_result_save({"task_id": "bt1", "total_return_pct": 1.5 + n})
        store.optimization_result_save({"task_id": "op1", "best": n})
        store.training_job_save({"task_id": "tr1", "status": "running", "epoch": n})
        store.task_result_save({"task_id": "tr1", "state": "COMPLETED", "n": n})
        store.retrain_history_save({"task_id": "rt1", "n": n})
        store.llm_analysis_save({"task_id": "la1", "n": n})
    for name, task_id in (
        (C.BACKTEST_RESULTS, "bt1"),
        (C.OPTIMIZATION_RESULTS, "op1"),
        (C.TRAINING_JOBS, "tr1"),
        (C.TASK_RESULTS, "tr1"),
        (C.RETRAIN_HISTORY, "rt1"),
        (C.LLM_ANALYSIS_HISTORY, "la1"),
    ):
        assert store.col(name).count_documents({"task_id": task_id}) == 1, name
    assert store.jobs.backtest_result_get("bt1")["total_return_pct"] == 3.5  # the last write
    assert store.training_job_get("tr1")["epoch"] == 2
    assert store.task_result_get("tr1")["n"] == 2


@pytest.mark.tc("TC-ASYNC-077")
def test_concurrent_writes_of_one_task_leave_one_document(store: Store) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: store.backtest_result_save({"task_id": "c1", "n": n}), range(16)))
    assert store.col(C.BACKTEST_RESULTS).count_documents({"task_id": "c1"}) == 1


@pytest.mark.tc("TC-ASYNC-077")
def test_unique_task_id_refuses_a_raw_duplicate(store: Store) -> None:
    store.task_result_save({"task_id": "u1"})
    with pytest.raises(DuplicateKeyStoreError, match="duplicate key"):
        store.jobs.insert(C.TASK_RESULTS, {"task_id": "u1"}, "inserting a duplicate")


@pytest.mark.tc("TC-ASYNC-103")
def test_dead_letters_saved_listed_and_marked_requeued(store: Store) -> None:
    dl = store.dead_letters
    for task_id in ("d1", "d2"):
        dl.dead_letter_save(
            {
                "task_id": task_id,
                "flow_name": "train-model",
                "parameters": {"symbol": "BTCUSDT"},
                "attempts": [{"run_count": 1, "state": "CRASHED", "message": "killed"}],
                "reason": "crashed 3 times",
            }
        )
    dl.dead_letter_save({"task_id": "d1", "reason": "crashed 3 times", "flow_name": "x"})
    assert store.col(C.DEAD_LETTERS).count_documents({}) == 2
    assert {d["task_id"] for d in dl.dead_letters_list()} == {"d1", "d2"}
    marked = dl.dead_letter_mark_requeued("d2", by="admin")
    assert marked["requeued_by"] == "admin"
    assert dl.dead_letter_get("d2")["requeued_at"] is not None
    assert [d["task_id"] for d in dl.dead_letters_list()] == ["d1"]
    assert len(dl.dead_letters_list(include_requeued=True)) == 2
    assert dl.dead_letter_mark_requeued("nope", by="admin") is None
    assert "expires_at" not in dl.dead_letter_get("d1")  # dead letters never expire


@pytest.mark.tc("TC-ASYNC-077")
def test_ensure_indexes_upgrades_an_old_non_unique_task_index(
    mongo_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pymongo import IndexModel

    from integrations.store import connect

    with Store(connect(mongo_uri), f"old_{uuid.uuid4().hex[:8]}") as old:
        for name in (C.BACKTEST_RESULTS, C.OPTIMIZATION_RESULTS):  # as earlier versions made them
            old.col(name).create_indexes([IndexModel([("task_id", 1)], name="task_id")])
        old.col(C.BACKTEST_RESULTS).insert_many([{"task_id": "a"}, {"task_id": "a"}])
        old.ensure_indexes()
        unique = [v for v in old.col(C.OPTIMIZATION_RESULTS).index_information().values()]
        assert any(v.get("unique") and v["key"] == [("task_id", 1)] for v in unique)
        old.optimization_result_save({"task_id": "b"})
        with pytest.raises(DuplicateKeyStoreError):
            old.jobs.insert(C.OPTIMIZATION_RESULTS, {"task_id": "b"}, "inserting a duplicate")
        assert "holds duplicates of task_id" in caplog.text  # said, not fatal
        old.db.client.drop_database(old.db.name)
