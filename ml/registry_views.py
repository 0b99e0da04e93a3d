"""Reading the model registry for operators: version names, the figures stored with each
version, lists and comparisons (the changes live in :mod:`ml.registry_ops`).

A version is named ``<model_type>-<symbol>-<timeframe>-v<number>`` (``lstm-BTCUSDT-1h-v3``);
its model id names it too. A version's status follows the deployed pointer, the truth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from core.exceptions import InvalidInputError, NotFoundError
from core.schemas.registry import (
    VERSION_EXAMPLE,
    VERSION_RE,
    HeldOutFigures,
    LiveFigures,
    ModelVersion,
    VersionComparison,
    VersionList,
    version_label,
)
from core.schemas.training import HeldOutComparison
from integrations.store import Store
from integrations.store.models import model_key
from ml.records import ModelRecord

LiveSource = Callable[[list[str]], dict[str, LiveFigures]]

_LABEL_RE = r"^([a-z]+)-([A-Z0-9]{2,12})-([0-9]{1,3}[mhdwM])-v([0-9]+)$"


def label(record: ModelRecord | dict[str, Any]) -> str:
    """The version name of a record or ``models`` document (``lstm-BTCUSDT-1h-v3``)."""
    d = record.to_doc() if isinstance(record, ModelRecord) else record
    return version_label(d["model_type"], d["symbol"], d["timeframe"], int(d["version"]))


def key_text(key: dict[str, Any]) -> str:
    """``lstm BTCUSDT 1h``."""
    return f"{key['model_type']} {key['symbol']} {key['timeframe']}"


def list_hint(key: dict[str, Any]) -> str:
    """The command that lists a key's versions."""
    return (
        f"botai models list --symbol {key['symbol']} --timeframe {key['timeframe']} "
        f"--model-type {key['model_type']}"
    )


def resolve(store: Store, version: str) -> ModelRecord:
    """The record a version name (``lstm-BTCUSDT-1h-v3``) or a model id names.

    Raises:
        InvalidInputError: ``version`` is neither form.
        NotFoundError: no such version (the message says how to list them).
    """
    text = str(version).strip()
    if not VERSION_RE.match(text):
        raise InvalidInputError(
            f"model version {text[:80]!r} is not a version name like {VERSION_EXAMPLE} "
            "(model_type-symbol-timeframe-vN) nor a 32-character model id: see `botai models "
            "list` or GET /api/models"
        )
    match = re.match(_LABEL_RE, text)
    if match is None:
        doc = store.model_get(text)
        hint = "botai models list"
    else:
        model_type, symbol, timeframe, number = match.groups()
        query = {"model_type": model_type, "symbol": symbol, "timeframe": timeframe}
        found = store.models_find({**query, "version": int(number)}, limit=1)
        doc = found[0] if found else None
        hint = list_hint(query)
    if doc is None:
        raise NotFoundError(f"No model version {text}: list the versions with `{hint}`")
    return ModelRecord.from_doc(doc)


def held_out_figures(metrics: dict[str, Any] | None) -> HeldOutFigures:
    """The stored held-out figures of a model's ``metrics``."""
    m = metrics or {}
    holdout = m.get("holdout") if isinstance(m.get("holdout"), dict) else {}
    comparisons = [HeldOutComparison(**c) for c in holdout.get("comparisons", [])]
    by_name = {c.name: c.accuracy for c in comparisons}
    base = m.get("baselines") if isinstance(m.get("baselines"), dict) else {}

    def baseline(name: str) -> float | None:
        if holdout:
            return by_name.get(name)
        value = base.get(name)
        return value.get("accuracy") if isinstance(value, dict) else value

    on_holdout = m.get("holdout_accuracy") is not None
    accuracy = m.get("holdout_accuracy") if on_holdout else m.get("val_accuracy")
    return HeldOutFigures(
        accuracy=accuracy,
        measured_on=("holdout" if on_holdout else "validation") if accuracy is not None else None,
        samples=holdout.get("holdout_samples") if on_holdout else m.get("validation_samples"),
        holdout_start=holdout.get("holdout_start"),
        holdout_end=holdout.get("holdout_end"),
        majority_class_accuracy=baseline("majority_class"),
        logistic_regression_accuracy=baseline("logistic_regression"),
        comparisons=comparisons,
        deploy_rule=holdout.get("reason"),
    )


def describe(
    doc: dict[str, Any],
    *,
    deployed_ids: set[str],
    labels: dict[str, str],
    live: dict[str, LiveFigures] | None = None,
) -> ModelVersion:
    """A :class:`ModelVersion` of a ``models`` document; its status follows the pointer
    (``deployed_ids``), ``labels`` names the versions it replaced."""
    status = doc.get("status", "candidate")
    if doc["model_id"] in deployed_ids:
        status = "deployed"
    elif status == "deployed":  # the pointer moved on; the status field has not yet
        status = "retired"
    replaced = doc.get("replaced_model_id")
    return ModelVersion(
        version=label(doc),
        model_id=doc["model_id"],
        model_type=doc["model_type"],
        symbol=doc["symbol"],
        timeframe=doc["timeframe"],
        number=int(doc["version"]),
        status=status,
        created_at=doc["created_at"],
        created_by=doc.get("created_by") or "",
        deployed_at=doc.get("deployed_at"),
        deployed_by=doc.get("deployed_by"),
        retired_at=doc.get("retired_at"),
        archived_at=doc.get("archived_at"),
        archived_by=doc.get("archived_by"),
        replaced_version=labels.get(replaced, replaced) if replaced else None,
        training_task_id=doc.get("training_task_id"),
        held_out=held_out_figures(doc.get("metrics")),
        live=(live or {}).get(doc["model_id"]),
    )


def describe_all(
    store: Store, docs: list[dict[str, Any]], live_source: LiveSource | None
) -> list[ModelVersion]:
    """:func:`describe` of each document, with the pointers and labels read once."""
    deployed_ids = {p["model_id"] for p in store.models.deploy_pointers()}
    labels = {d["model_id"]: label(d) for d in docs}
    missing = {d["replaced_model_id"] for d in docs if d.get("replaced_model_id")} - set(labels)
    if missing:
        extra = store.models_find({"model_id": {"$in": sorted(missing)}})
        labels.update({d["model_id"]: label(d) for d in extra})
    live = live_source([d["model_id"] for d in docs]) if live_source and docs else None
    return [describe(d, deployed_ids=deployed_ids, labels=labels, live=live) for d in docs]


def list_versions(
    store: Store,
    *,
    symbol: str | None = None,
    timeframe: str | None = None,
    model_type: str | None = None,
    limit: int = 200,
    live_source: LiveSource | None = None,
) -> VersionList:
    """Versions matching the filters (none: every key), newest first."""
    query = {
        k: v
        for k, v in (("symbol", symbol), ("timeframe", timeframe), ("model_type", model_type))
        if v is not None
    }
    docs = store.models_find(query, sort=[("created_at", -1), ("version", -1)], limit=limit)
    versions = describe_all(store, docs, live_source)
    deployed = {
        f"{v.model_type}-{v.symbol}-{v.timeframe}": v.version
        for v in versions
        if v.status == "deployed"
    }
    return VersionList(versions=versions, count=len(versions), deployed=deployed)


def compare(
    store: Store, a: str, b: str, live_source: LiveSource | None = None
) -> VersionComparison:
    """Two versions side by side, with the difference of their held-out accuracies.

    Raises:
        InvalidInputError, NotFoundError: see :func:`resolve`.
    """
    docs = [resolve(store, a).to_doc(), resolve(store, b).to_doc()]
    va, vb = describe_all(store, docs, live_source)
    fa, fb = va.held_out, vb.held_out
    diff = se = None
    if fa.accuracy is not None and fb.accuracy is not None:
        diff = fa.accuracy - fb.accuracy
        if fa.samples and fb.samples:
            se = math.sqrt(
                fa.accuracy * (1 - fa.accuracy) / fa.samples
                + fb.accuracy * (1 - fb.accuracy) / fb.samples
            )
    same = fa.holdout_start is not None and (
        (fa.holdout_start, fa.holdout_end) == (fb.holdout_start, fb.holdout_end)
    )
    if diff is None:
        note = "a held-out accuracy is missing: no difference measured"
    elif se is None:
        note = f"difference {diff:+.4f}; sample counts missing: no standard error"
    else:
        note = f"difference {diff:+.4f} ({diff / se:+.1f} SE)" if se else f"difference {diff:+.4f}"
        note += "" if same else "; measured on different hours: read it with care"
    return VersionComparison(
        a=va,
        b=vb,
        same_key=model_key(docs[0]) == model_key(docs[1]),
        accuracy_difference=diff,
        standard_error=se,
        same_holdout=same,
        note=note,
    )


def newest_servable(store: Store, model_type: str, symbol: str, timeframe: str) -> str | None:
    """The newest version of the key that may serve when asked for (a candidate or a retired
    version), or None: what a "nothing deployed" message proposes."""
    key = {"model_type": model_type, "symbol": symbol, "timeframe": timeframe}
    docs = store.models_find(
        {**key, "status": {"$in": ["candidate", "retired"]}}, sort=[("version", -1)], limit=1
    )
    return label(docs[0]) if docs else None


def serving_version(
    store: Store,
    version: str,
    *,
    symbols: list[str],
    timeframe: str,
    model_type: str | None = None,
) -> tuple[ModelRecord, bool]:
    """The record a job asked to serve with (``model_version``), checked against the job.

    Args:
        symbols: the symbols the job serves (the version's must be one of them).
        model_type: the job's model type, when it names one.

    Returns:
        (the record, whether it is the deployed version of its key).

    Raises:
        InvalidInputError: malformed name; an archived version; a version of another
            symbol, timeframe or model type (the message says what to pass).
        NotFoundError: no such version.
    """
    record = resolve(store, version)
    name = label(record)
    if record.status == "archived":
        raise InvalidInputError(
            f"model_version {name} is archived and never serves: pass another version "
            f"(`{list_hint(record.to_doc())}`) or leave model_version out for the deployed one"
        )
    wanted = {"timeframe": timeframe, **({"model_type": model_type} if model_type else {})}
    wrong = [f"{k}={v}" for k, v in wanted.items() if getattr(record, k) != v]
    if record.symbol not in symbols:
        wrong.append(f"symbol {'/'.join(symbols[:3])}")
    if wrong:
        raise InvalidInputError(
            f"model_version {name} is a {record.model_type} {record.symbol} {record.timeframe} "
            f"model, the request asks for {', '.join(wrong)}: pass a version of the same "
            f"symbol, timeframe and model type (`{list_hint(wanted | {'symbol': symbols[0]})}`)"
            if model_type
            else f"model_version {name} is a {record.model_type} {record.symbol} "
            f"{record.timeframe} model, the request asks for {', '.join(wrong)}: add "
            f"{record.symbol} to symbols and use timeframe {record.timeframe}, or pass "
            "another version"
        )
    pointers = store.models.deploy_pointers(model_key(record.to_doc()))
    return record, bool(pointers) and pointers[0]["model_id"] == record.model_id


def with_served_versions(outcomes: list[Any], served: dict[str, tuple[str, bool]]) -> list[Any]:
    """``outcomes`` (bulk-analysis results and failures) with each model signal naming the
    version that served it and whether it is deployed (``served``: model id -> both)."""
    out = []
    for o in outcomes:
        info = served.get(getattr(o, "model_id", None) or "")
        if info is not None and getattr(o, "source", None) == "model":
            o = o.model_copy(
                update={"served_model_version": info[0], "served_model_deployed": info[1]}
            )
        out.append(o)
    return out
