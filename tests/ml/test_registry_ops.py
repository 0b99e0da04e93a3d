"""Registry operations on real small models: promote, roll back, archive, each change audited;
the statuses follow the deployed pointer; figures are those the training measured."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from core.exceptions import ConflictError, InvalidInputError, NotFoundError
from core.schemas.registry import ModelKey
from integrations.store import C, Store
from ml import registry_ops as ops
from ml.registry import ModelRegistry
from tests.ml.helpers import make_candles
from tests.ml.registry_helpers import TrainedSmall, register_candidate, train_small

KEY = ModelKey(model_type="gru", symbol="OPSUSDT", timeframe="1h")


@pytest.fixture(scope="module")
def trained() -> list[TrainedSmall]:
    """Three tiny GRUs fitted with different seeds on one series (once per module)."""
    candles = make_candles(800, seed=11)
    return [train_small(candles, seed=seed) for seed in (1, 2, 3)]


@pytest.fixture
def three(store: Store, tmp_path: Path, trained: list[TrainedSmall]) -> list[str]:
    """Three candidates of gru OPSUSDT 1h (v1-v3)."""
    key = os.urandom(32)
    return [
        ops.label(
            register_candidate(store, tmp_path, key, t, symbol="OPSUSDT", created_by="trainer")
        )
        for t in trained
    ]


def _statuses(store: Store) -> dict[str, str]:
    return {v.version: v.status for v in ops.list_versions(store, symbol="OPSUSDT").versions}


def _pointer(store: Store) -> str | None:
    pointers = store.models.deploy_pointers(KEY.model_dump())
    return ops.label(store.model_get(pointers[0]["model_id"])) if pointers else None


@pytest.mark.tc("TC-ASYNC-020")
def test_promote_rollback_archive_walk_the_statuses_and_audit_every_change(
    store: Store, three: list[str]
) -> None:
    v1, v2, v3 = three
    assert v1 == "gru-OPSUSDT-1h-v1" and v3 == "gru-OPSUSDT-1h-v3"
    assert _statuses(store) == dict.fromkeys(three, "candidate") and _pointer(store) is None

    first = ops.promote(store, v1, by="alice", reason="first model for the demo")
    assert first.changed and first.version.status == "deployed" and _pointer(store) == v1
    (entry,) = first.audit
    assert (entry.by, entry.action, entry.version) == ("alice", "promote", v1)
    assert (entry.from_status, entry.to_status) == ("candidate", "deployed")
    assert entry.reason == "first model for the demo"

    second = ops.promote(store, v2, by="bob", reason="beats v1 on the held-out hours")
    assert {(e.version, e.from_status, e.to_status) for e in second.audit} == {
        (v2, "candidate", "deployed"),
        (v1, "deployed", "retired"),
    }
    assert len({e.operation_id for e in second.audit}) == 1
    assert second.version.replaced_version == v1
    ops.promote(store, v3, by="bob", reason="newer data")
    assert _statuses(store) == {v1: "retired", v2: "retired", v3: "deployed"}

    back = ops.rollback(store, KEY, by="carol", reason="v3 signals look wrong")
    assert _pointer(store) == v2 and back.version.version == v2
    assert {(e.version, e.to_status) for e in back.audit} == {(v2, "deployed"), (v3, "retired")}
    ops.rollback(store, KEY, by="carol", reason="v2 too")  # walks back, never bounces to v3
    assert _pointer(store) == v1
    assert _statuses(store) == {v1: "deployed", v2: "retired", v3: "retired"}
    with pytest.raises(ConflictError, match=f"{v1} replaced no earlier version"):
        ops.rollback(store, KEY, by="carol", reason="once more")

    with pytest.raises(ConflictError, match="is the deployed version .* Roll back"):
        ops.archive(store, v1, by="dave", reason="tidy up")
    archived = ops.archive(store, v3, by="dave", reason="bad signals")
    assert archived.changed and archived.version.status == "archived"
    again = ops.archive(store, v3, by="dave", reason="bad signals")  # a retried request
    assert not again.changed and again.audit == []
    with pytest.raises(ConflictError, match="archived: an archived version is never deployed"):
        ops.promote(store, v3, by="dave", reason="changed my mind")
    same = ops.promote(store, v1, by="erin", reason="already")
    assert not same.changed and "already deployed" in same.message

    trail = ops.audit_trail(store, symbol="OPSUSDT")
    assert [e.action for e in trail] == [
        "archive",
        *["rollback"] * 4,
        *["promote"] * 5,
    ]
    assert trail[0].at >= trail[-1].at and trail[0].by == "dave"
    assert store.col(C.MODEL_AUDIT).count_documents({}) == 10
    assert store.col(C.MODELS).count_documents({"symbol": "OPSUSDT"}) == 3  # none deleted


@pytest.mark.tc("TC-ASYNC-020")
def test_listing_shows_the_measured_figures_and_comparing_gives_the_difference_and_its_se(
    store: Store, three: list[str]
) -> None:
    v1, v2, _ = three
    listed = ops.list_versions(store, symbol="OPSUSDT", model_type="gru", timeframe="1h")
    assert [v.version for v in listed.versions] == list(reversed(three))  # newest first
    for v in listed.versions:
        doc = store.model_get(v.model_id)
        h = v.held_out
        assert h.measured_on == "holdout" and h.accuracy == doc["metrics"]["holdout_accuracy"]
        assert h.samples == doc["metrics"]["holdout"]["holdout_samples"] > 100
        names = {c.name: c for c in h.comparisons}
        assert set(names) == {"majority_class", "logistic_regression"}
        assert h.majority_class_accuracy == names["majority_class"].accuracy
        assert names["logistic_regression"].standard_error > 0
        assert v.live is None  # nothing served and scored yet
    assert listed.deployed == {}
    ops.promote(store, v2, by="alice", reason="best held-out accuracy")
    assert ops.list_versions(store).deployed == {"gru-OPSUSDT-1h": v2}

    cmp = ops.compare(store, v1, store.model_get(listed.versions[1].model_id)["model_id"])
    a, b = cmp.a.held_out, cmp.b.held_out
    assert cmp.b.version == v2 and cmp.same_key and cmp.same_holdout
    assert cmp.accuracy_difference == pytest.approx(a.accuracy - b.accuracy)
    expected_se = math.sqrt(
        a.accuracy * (1 - a.accuracy) / a.samples + b.accuracy * (1 - b.accuracy) / b.samples
    )
    assert cmp.standard_error == pytest.approx(expected_se)

    with pytest.raises(NotFoundError, match="No model version gru-OPSUSDT-1h-v9: list the"):
        ops.compare(store, v1, "gru-OPSUSDT-1h-v9")
    with pytest.raises(InvalidInputError, match="not a version name like lstm-BTCUSDT-1h-v3"):
        ops.promote(store, "latest", by="x", reason="why not")


@pytest.mark.tc("TC-ASYNC-020")
def test_a_deploy_by_training_is_remembered_so_rollback_undoes_it(
    store: Store, three: list[str], tmp_path: Path
) -> None:
    """The training's own deploy (ModelRegistry.deploy) retires the replaced model and
    names it, like a promote: an operator can roll it back."""
    v1, v2, _ = three
    ops.promote(store, v1, by="alice", reason="start")
    registry = ModelRegistry(store, tmp_path, os.urandom(32))
    registry.deploy(ops.resolve(store, v2).model_id, by="train-model")
    assert _statuses(store)[v1] == "retired" and _pointer(store) == v2
    ops.rollback(store, KEY, by="bob", reason="the retrained model trades worse")
    assert _pointer(store) == v1
    with pytest.raises(ConflictError, match="No gru NONEUSDT 1h version is deployed"):
        ops.rollback(
            store,
            ModelKey(model_type="gru", symbol="NONEUSDT", timeframe="1h"),
            by="bob",
            reason="nothing there",
        )


@pytest.mark.tc("TC-ASYNC-013", "TC-ASYNC-011")
def test_an_explicit_version_serves_a_candidate_and_the_result_says_which(
    mongo_block: Store, model_store_block, trained: list[TrainedSmall]
) -> None:
    from core.schemas.analysis import BulkAnalysisParams, PredictPriceParams
    from flows.bulk_analysis import bulk_analysis
    from flows.predict_price import predict_price

    key, folder = model_store_block.get_key(), Path(model_store_block.directory)
    v1, v2 = (
        ops.label(register_candidate(mongo_block, folder, key, t, symbol="OPSUSDT"))
        for t in trained[:2]
    )
    mongo_block.upsert_candles("OPSUSDT", "1h", make_candles(3200, seed=12), source="synthetic")
    with pytest.raises(NotFoundError, match=f"its models stayed candidates.*model_version={v2}"):
        predict_price(PredictPriceParams(symbol="OPSUSDT", model_type="gru", horizon_hours=6))

    asked = predict_price(PredictPriceParams(model_version=v1, horizon_hours=6))  # key from v1
    assert (asked.symbol, asked.model_type) == ("OPSUSDT", "gru")
    assert asked.served_model_version == v1 and asked.served_model_deployed is False
    assert asked.model_id == ops.resolve(mongo_block, v1).model_id
    assert len(asked.predictions) == 6

    ops.promote(mongo_block, v1, by="alice", reason="forecast with it")
    default = predict_price(PredictPriceParams(symbol="OPSUSDT", model_type="gru", horizon_hours=6))
    assert default.served_model_version == v1 and default.served_model_deployed is True
    assert default.up_probability == pytest.approx(asked.up_probability)

    mongo_block.upsert_candles("QUIETUSDT", "1h", make_candles(400, seed=3), source="synthetic")
    bulk = bulk_analysis(BulkAnalysisParams(symbols=["OPSUSDT", "QUIETUSDT"], model_version=v2))
    by_symbol = {r.symbol: r for r in bulk.results}
    assert by_symbol["OPSUSDT"].source == "model"
    assert by_symbol["OPSUSDT"].served_model_version == v2
    assert by_symbol["OPSUSDT"].served_model_deployed is False
    assert by_symbol["QUIETUSDT"].source == "indicators"
    assert by_symbol["QUIETUSDT"].served_model_version is None
    plain = bulk_analysis(BulkAnalysisParams(symbols=["OPSUSDT"]))
    assert plain.results[0].served_model_version == v1
    assert plain.results[0].served_model_deployed is True
