"""Model registry storage: unique versions and the atomic deployed pointer."""

from __future__ import annotations

import contextlib
import os
import random
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.exceptions import InvalidInputError
from integrations.store import C, DuplicateKeyStoreError, Store
from ml.records import ModelRecord
from ml.registry import ModelRegistry

KEY = {"model_type": "lstm", "symbol": "BTCUSDT", "timeframe": "1h"}


def _record(version: int, accuracy: float, **key: str) -> ModelRecord:
    return ModelRecord(
        model_id=uuid.uuid4().hex,
        **{**KEY, **key},
        version=version,
        file_path="/nonexistent",
        metrics={"val_accuracy": accuracy},
        status="candidate",
        created_by="test",
        created_at=datetime.now(UTC),
        feature_spec={},
        horizon_bars=1,
    )


@pytest.fixture
def registry(store: Store, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(store, tmp_path / "models", os.urandom(32))


@pytest.mark.tc("TC-ASYNC-020")
def test_versions_are_unique_per_key(store: Store) -> None:
    store.model_insert(_record(1, 0.5).to_doc())
    with pytest.raises(DuplicateKeyStoreError):
        store.model_insert(_record(1, 0.6).to_doc())
    store.model_insert(_record(1, 0.6, model_type="gru").to_doc())  # another key: fine
    assert store.models.model_next_version(**KEY) == 2


@pytest.mark.tc("TC-ASYNC-020", "TC-ASYNC-056")
def test_concurrent_deploys_keep_exactly_one_deployed_per_key(
    store: Store, registry: ModelRegistry
) -> None:
    records = [_record(v, 0.5 + v / 100) for v in range(1, 6)]
    other = _record(1, 0.9, model_type="gru")
    for r in [*records, other]:
        store.model_insert(r.to_doc())
    registry.deploy(records[0].model_id, by="test")
    registry.deploy(other.model_id, by="test")
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:  # what a reader sees while deploys race
        while not stop.is_set():
            seen.append(len(store.models.deploy_pointers(KEY)))

    def deployer(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(4):
            with contextlib.suppress(InvalidInputError):  # a model archived by another deploy
                registry.deploy(rnd.choice(records).model_id, by=f"thread {seed}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=deployer, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    watcher.join(10)
    assert seen and set(seen) == {1}  # never two, never zero
    (pointer,) = store.models.deploy_pointers(KEY)
    deployed = registry.deployed("BTCUSDT", "1h", "lstm")
    assert deployed.model_id == pointer["model_id"]
    assert registry.deployed("BTCUSDT", "1h").model_id == other.model_id  # best across types
    registry.reconcile_status("lstm", "BTCUSDT", "1h", by="settle")
    statuses = {d["model_id"]: d["status"] for d in store.models_find(KEY)}
    assert list(statuses.values()).count("deployed") == 1
    assert statuses[pointer["model_id"]] == "deployed"
    assert store.col(C.MODELS).count_documents(KEY) == 5  # archived models are kept


@pytest.mark.tc("TC-ASYNC-020")
def test_archiving_the_deployed_model_undeploys_the_key(
    store: Store, registry: ModelRegistry
) -> None:
    rec = _record(1, 0.6)
    store.model_insert(rec.to_doc())
    registry.deploy(rec.model_id, by="test")
    registry.archive(rec.model_id, by="test")
    assert registry.deployed("BTCUSDT", "1h") is None
    assert store.model_get(rec.model_id)["status"] == "archived"


@pytest.mark.tc("TC-ASYNC-020")
def test_pointers_backfilled_from_status_of_older_databases(store: Store) -> None:
    old = {**_record(1, 0.6).to_doc(), "status": "deployed"}
    store.col(C.MODELS).insert_one(old)
    store.col(C.META).delete_many({})  # such a database has no index marker either
    assert store.ensure_indexes()
    (pointer,) = store.models.deploy_pointers(KEY)
    assert pointer["model_id"] == old["model_id"]
    assert [d["model_id"] for d in store.deployed_model_docs(timeframe="1h")] == [old["model_id"]]
