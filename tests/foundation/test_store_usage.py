"""The gateway's usage records and quota counters in the store (integrations/store/usage.py),
method by method against the session's real nx-27017, and against a port nothing listens on.

These pin down what each accessor returns and writes, exactly (the mutation bench,
bench/bench_mutation.py, runs them against every small change of the module).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from core.exceptions import StoreUnavailableError
from integrations.store import C, Store, connect
from integrations.store.boundary import Boundary
from integrations.store.schema import Retention
from integrations.store.usage import ApiUsage, utc_day
from tests.peers import free_port

pytestmark = pytest.mark.tc("TC-ASYNC-095")

NOW = datetime(2026, 12, 7, 10, 30, tzinfo=UTC)


def _counter(store: Store, user: str, job: str, day: str) -> dict | None:
    return store.col(C.API_QUOTA).find_one({"user": user, "job": job, "day": day}, {"_id": 0})


def test_utc_day_is_the_calendar_day_in_utc() -> None:
    east = timezone(timedelta(hours=3))
    assert utc_day(datetime(2026, 12, 7, 1, 30, tzinfo=east)) == "2026-12-06"
    assert utc_day(datetime(2026, 12, 6, 23, 59, tzinfo=timezone(timedelta(hours=-2)))) == (
        "2026-12-07"
    )
    assert utc_day(NOW) == "2026-12-07"


def test_first_slot_creates_the_counter_from_runs_already_recorded(store: Store) -> None:
    usage = store.api_usage
    for i in range(2):  # written before counters existed
        store.col(C.API_USAGE).insert_one(
            {"user": "ann", "job": "train", "day": "2026-12-07", "created_at": NOW, "n": i}
        )
    store.col(C.API_USAGE).insert_one(  # another job and another day do not count
        {"user": "ann", "job": "backtest", "day": "2026-12-07", "created_at": NOW}
    )
    store.col(C.API_USAGE).insert_one(
        {"user": "ann", "job": "train", "day": "2026-12-06", "created_at": NOW}
    )
    assert usage.used("ann", "train", NOW) == 2  # no counter yet: counted from the records
    assert usage.take_slot("ann", "train", 5, NOW) is True
    counter = _counter(store, "ann", "train", "2026-12-07")
    assert counter["used"] == 3
    assert counter["created_at"] == NOW
    assert counter["expires_at"] == NOW + timedelta(days=7)  # the collection's retention
    assert usage.used("ann", "train", NOW) == 3
    # the counter now decides, not the records: a new record does not move it
    store.col(C.API_USAGE).insert_one(
        {"user": "ann", "job": "train", "day": "2026-12-07", "created_at": NOW}
    )
    assert usage.used("ann", "train", NOW) == 3
    assert store.col(C.API_QUOTA).count_documents({}) == 1


def test_slots_are_counted_one_by_one_up_to_the_limit(store: Store) -> None:
    usage = store.api_usage
    assert [usage.take_slot("bob", "predict", 3, NOW) for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]
    assert usage.used("bob", "predict", NOW) == 3
    assert usage.take_slot("bob", "predict", 4, NOW) is True  # a higher limit: one more
    assert usage.used("bob", "predict", NOW) == 4
    assert usage.take_slot("bob", "predict", 0, NOW) is False
    assert usage.used("bob", "predict", NOW) == 4
    # per job, per user and per UTC day
    assert usage.take_slot("bob", "backtest", 1, NOW) is True
    assert usage.take_slot("cy", "predict", 1, NOW) is True
    tomorrow = NOW + timedelta(days=1)
    assert usage.used("bob", "predict", tomorrow) == 0
    assert usage.take_slot("bob", "predict", 1, tomorrow) is True
    assert usage.used("bob", "predict", NOW) == 4
    assert usage.used("bob", "backtest", NOW) == 1
    assert usage.used("cy", "predict", NOW) == 1


def test_giving_back_a_slot_never_goes_below_zero(store: Store) -> None:
    usage = store.api_usage
    usage.take_slot("dee", "train", 2, NOW)
    usage.take_slot("dee", "train", 2, NOW)
    usage.give_slot("dee", "train", "2026-12-07")
    assert usage.used("dee", "train", NOW) == 1
    usage.give_slot("dee", "train", "2026-12-07")
    usage.give_slot("dee", "train", "2026-12-07")
    assert usage.used("dee", "train", NOW) == 0
    assert usage.take_slot("dee", "train", 1, NOW) is True
    assert usage.take_slot("dee", "train", 1, NOW) is False
    usage.give_slot("dee", "train", "2026-12-06")  # another day's counter: nothing changes
    usage.give_slot("dee", "backtest", "2026-12-07")
    assert usage.used("dee", "train", NOW) == 1


def test_usage_records_are_written_read_linked_and_removed(store: Store) -> None:
    usage = store.api_usage
    doc = {"user": "eve", "job": "train", "day": "2026-12-07", "created_at": NOW}
    rid = usage.record({**doc, "task_id": None, "idempotency_key": "k1"})
    got = usage.get(rid)
    assert got["_id"] == rid
    assert (got["user"], got["task_id"], got["idempotency_key"]) == ("eve", None, "k1")
    assert got["expires_at"] == NOW + timedelta(days=7)
    assert usage.get("no-such-id") is None
    assert usage.count_task("run-1") == 0
    usage.set_task(rid, "run-1")
    assert usage.get(rid)["task_id"] == "run-1"
    assert usage.count_task("run-1") == 1
    assert usage.owner_of("run-1")["user"] == "eve"
    assert "_id" not in usage.owner_of("run-1")
    assert usage.owner_of("run-2") is None
    assert usage.find_by_key("eve", "train", "k1")["task_id"] == "run-1"
    assert usage.find_by_key("eve", "train", "k2") is None
    assert usage.find_by_key("eve", "backtest", "k1") is None
    assert usage.find_by_key("mallory", "train", "k1") is None
    removed = usage.remove(rid)
    assert (removed["_id"], removed["task_id"]) == (rid, "run-1")
    assert usage.get(rid) is None
    assert usage.remove(rid) is None
    assert usage.count_task("run-1") == 0


def test_a_users_runs_newest_first_without_reservations(store: Store) -> None:
    usage = store.api_usage
    for i in range(53):
        rid = usage.record(
            {
                "user": "fay",
                "job": "predict",
                "day": "2026-12-07",
                "created_at": NOW + timedelta(minutes=i),
            }
        )
        usage.set_task(rid, f"run-{i:02d}")
    # a reservation whose run is not created yet (as the gateway writes it) is no run
    usage.record(
        {"user": "fay", "job": "predict", "created_at": NOW + timedelta(hours=5), "task_id": None}
    )
    usage.record({"user": "gus", "job": "predict", "created_at": NOW, "task_id": "other"})
    runs = usage.tasks_of("fay")
    assert len(runs) == 50  # the default limit
    assert [r["task_id"] for r in runs[:3]] == ["run-52", "run-51", "run-50"]
    assert runs[-1]["task_id"] == "run-03"
    assert [r["task_id"] for r in usage.tasks_of("fay", limit=2)] == ["run-52", "run-51"]
    assert usage.tasks_of("nobody") == []


def _unreachable(retry_s: float, waits: list[float]) -> ApiUsage:
    """ApiUsage on a loopback port nothing listens on; ``waits`` records each retry's wait."""
    client = connect(f"mongodb://127.0.0.1:{free_port()}", timeout_ms=100)
    return ApiUsage(client["usage"], Boundary(retry_s, sleep=waits.append), Retention())


def test_an_unreachable_store_names_the_operation_that_failed() -> None:
    usage = _unreachable(0.0, [])
    calls = [
        ("taking a quota slot", lambda: usage.take_slot("u", "train", 3, NOW)),
        ("giving back a quota slot", lambda: usage.give_slot("u", "train", "2026-12-07")),
        ("reading a quota", lambda: usage.used("u", "train", NOW)),
        ("recording API usage", lambda: usage.record({"user": "u", "created_at": NOW})),
        ("reading API usage", lambda: usage.get("x")),
        ("releasing API usage", lambda: usage.remove("x")),
        ("recording a run", lambda: usage.set_task("x", "run")),
        ("reading API usage", lambda: usage.count_task("run")),
        ("reading API usage", lambda: usage.find_by_key("u", "train", "k")),
        ("reading API usage", lambda: usage.owner_of("run")),
        ("listing a user's runs", lambda: usage.tasks_of("u")),
    ]
    for what, call in calls:
        with pytest.raises(StoreUnavailableError) as info:
            call()
        assert f"MongoDB store unavailable while {what} (" in str(info.value), what


def test_only_idempotent_operations_are_retried() -> None:
    waits: list[float] = []
    usage = _unreachable(1.5, waits)
    with pytest.raises(StoreUnavailableError):
        usage.give_slot("u", "train", "2026-12-07")  # a lost answer would count twice
    assert waits == []
    with pytest.raises(StoreUnavailableError):
        usage.used("u", "train", NOW)  # a read: retried within the budget
    assert waits and 0 < waits[0] <= 0.25
    waits.clear()
    with pytest.raises(StoreUnavailableError, match="taking a quota slot"):
        usage.take_slot("u", "train", 3, NOW)  # the conditional increment comes first
    assert waits == []  # and is never retried: a lost answer would count twice
