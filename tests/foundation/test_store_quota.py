"""The gateway's daily quota: one atomic counter per user, job and UTC day."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from api import quotas
from integrations.store import C, Store


def _race(store: Store, n: int, limit: int, now: datetime) -> tuple[list, list]:
    barrier = threading.Barrier(n)
    taken, refused = [], []

    def one() -> None:
        barrier.wait()
        try:
            taken.append(quotas.reserve(store, "quinn", "train", limit, "trainings", now))
        except quotas.QuotaExceededError as e:
            refused.append(e)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return taken, refused


@pytest.mark.tc("TC-ASYNC-095", "TC-ASYNC-028")
def test_concurrent_reservations_never_exceed_the_limit(store: Store) -> None:
    now = datetime.now(UTC)
    taken, refused = _race(store, 16, 10, now)
    assert (len(taken), len(refused)) == (10, 6)
    assert "Max 10 trainings per day exceeded" in str(refused[0])
    assert quotas.used_today(store, "quinn", "train", now) == 10
    assert store.col(C.API_USAGE).count_documents({"user": "quinn"}) == 10
    quotas.release(store, taken[0])
    quotas.release(store, taken[0])  # releasing twice gives back one slot only
    assert quotas.used_today(store, "quinn", "train", now) == 9
    again, refused = _race(store, 4, 10, now)
    assert (len(again), len(refused)) == (1, 3)
    tomorrow = now + timedelta(days=1)
    assert quotas.used_today(store, "quinn", "train", tomorrow) == 0  # a new UTC day


@pytest.mark.tc("TC-ASYNC-095")
def test_confirm_counts_one_run_once(store: Store) -> None:
    now = datetime.now(UTC)
    first = quotas.reserve(store, "ann", "backtest", 5, "backtests", now, idempotency_key="k")
    second = quotas.reserve(store, "ann", "backtest", 5, "backtests", now, idempotency_key="k")
    assert quotas.confirm(store, first, "run-1")
    assert not quotas.confirm(store, second, "run-1")  # same run: counted once
    assert quotas.used_today(store, "ann", "backtest", now) == 1
    assert quotas.owner_of(store, "run-1")["user"] == "ann"
    assert [d["task_id"] for d in quotas.tasks_of(store, "ann")] == ["run-1"]
    assert quotas.find_by_key(store, "ann", "backtest", "k")["task_id"] == "run-1"


@pytest.mark.tc("TC-ASYNC-095")
def test_counter_starts_from_runs_recorded_before_it_existed(store: Store) -> None:
    now = datetime.now(UTC)
    day = quotas.utc_day(now)
    for _ in range(3):  # usage written by a gateway version without counters
        store.col(C.API_USAGE).insert_one(
            {"user": "old", "job": "train", "day": day, "created_at": now, "task_id": None}
        )
    assert quotas.used_today(store, "old", "train", now) == 3
    quotas.reserve(store, "old", "train", 4, "trainings", now)
    with pytest.raises(quotas.QuotaExceededError):
        quotas.reserve(store, "old", "train", 4, "trainings", now)
