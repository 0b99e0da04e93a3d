"""The store's error boundary against a real nx-27017 process that is killed, hung and restarted.

Each test starts its own nx-27017 (the session's server stays untouched), injects the fault by
signalling the real process and restarts it on the same port and data folder.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from core.exceptions import StoreError, StoreUnavailableError
from integrations.embedded_mongo import EmbeddedMongo, start_embedded_mongo
from integrations.store import C, Store, connect


class Server:
    """An nx-27017 process that a test may kill and start again on the same port/data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: EmbeddedMongo = start_embedded_mongo(data_dir)
        self.uri = self.proc.uri
        self.port = int(self.uri.rstrip("/").rsplit(":", 1)[1])

    def kill(self) -> None:
        self.proc.process.kill()
        self.proc.process.wait(10)

    def restart(self) -> None:
        self.proc = start_embedded_mongo(self.data_dir, port=self.port)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "nx")
    yield srv
    if srv.proc.process.poll() is None:
        os.kill(srv.proc.process.pid, signal.SIGCONT)
    srv.proc.stop()


def _store(server: Server, retry_s: float = 0.0) -> Store:
    client = connect(server.uri, timeout_ms=300, socket_timeout_ms=1000)
    label = server.uri.replace("mongodb://", "mongodb://bot:s3cret@")  # as a block would show it
    return Store(client, "outage", retry_s=retry_s, uri_label=label)


def _candles(n: int) -> pd.DataFrame:
    idx = pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")
    close = pd.Series(range(100, 100 + n), index=idx, dtype=float)
    return pd.DataFrame(
        {"open": close, "high": close + 1, "low": close - 1, "close": close, "volume": 1.0},
        index=idx,
    )


@pytest.mark.tc("TC-ASYNC-078", "TC-ASYNC-079")
def test_killed_store_is_unavailable_for_reads_and_writes_then_back(server: Server) -> None:
    store = _store(server)
    store.ensure_indexes()
    store.upsert_candles("BTCUSDT", "1h", _candles(24), source="synthetic")
    store.task_result_save({"task_id": "t1", "status": "completed"})
    server.kill()
    t0 = time.monotonic()
    reads = [
        lambda: store.load_candles("BTCUSDT", "1h"),
        lambda: store.task_result_get("t1"),
        lambda: store.models_find({}),
        store.llm_enabled,
        store.ping,
    ]
    writes = [
        lambda: store.task_result_save({"task_id": "t2"}),
        lambda: store.upsert_candles("ETHUSDT", "1h", _candles(3), source="synthetic"),
        lambda: store.alert_record({"fingerprint": "f"}),
    ]
    for call in reads + writes:
        with pytest.raises(StoreUnavailableError, match="MongoDB store unavailable"):
            call()
    assert time.monotonic() - t0 < 10  # answered, not hung (retry budget 0)
    server.restart()
    assert len(store.load_candles("BTCUSDT", "1h")) == 24  # the same client recovers
    assert store.task_result_get("t1")["status"] == "completed"
    store.task_result_save({"task_id": "t2"})
    assert store.task_result_get("t2") is not None
    store.close()


@pytest.mark.tc("TC-ASYNC-076")
def test_hung_store_answers_unavailable_within_the_socket_timeout(server: Server) -> None:
    store = _store(server)
    store.task_result_save({"task_id": "t1", "status": "completed"})
    os.kill(server.proc.process.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError):
            store.task_result_get("t1")
        hung_s = time.monotonic() - t0
    finally:
        os.kill(server.proc.process.pid, signal.SIGCONT)
    assert hung_s < 8, hung_s  # 1 s socket timeout, pymongo's one retryable read
    assert store.task_result_get("t1")["status"] == "completed"
    store.close()


@pytest.mark.tc("TC-ASYNC-079")
def test_retry_budget_rides_out_a_restart(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    store = _store(server, retry_s=30)
    store.ensure_indexes()
    server.kill()
    outcome: dict[str, object] = {}

    def job() -> None:
        t0 = time.monotonic()
        try:
            store.task_result_save({"task_id": "t9", "status": "completed"})
            outcome["doc"] = store.task_result_get("t9")
        except Exception as e:  # noqa: BLE001 - the assertion below reports it
            outcome["error"] = e
        outcome["took_s"] = time.monotonic() - t0

    caplog.set_level(logging.WARNING, logger="integrations.store.boundary")
    worker = threading.Thread(target=job)
    worker.start()
    time.sleep(2.0)  # the write is failing and being retried meanwhile
    assert worker.is_alive()
    server.restart()
    worker.join(30)
    assert "error" not in outcome, outcome
    assert outcome["doc"]["status"] == "completed"
    assert 2.0 <= outcome["took_s"] < 30
    assert store.col(C.TASK_RESULTS).count_documents({"task_id": "t9"}) == 1
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries and all("saving a task result" in m for m in retries[:1])
    assert "s3cret" not in caplog.text and "bot:***@" in retries[0]  # URI redacted
    store.close()


@pytest.mark.tc("TC-ASYNC-079")
def test_permanent_refusal_is_not_retried(server: Server) -> None:
    store = _store(server, retry_s=30)
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="DocumentTooLarge") as info:
        store.task_result_save({"task_id": "big", "blob": "x" * (17 * 1024 * 1024)})
    assert not isinstance(info.value, StoreUnavailableError)
    assert time.monotonic() - t0 < 5
    store.close()
