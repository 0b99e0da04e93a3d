"""Scoring ledger entries against their outcomes, and a model's live figures (pure).

An entry (see :mod:`ml.ledger`) is scored once its outcome candle has arrived: the close of
the candle that opens at its ``target_time``. Scoring adds:

* ``rose``: whether the outcome close is above the origin close.
* ``p_up``: the probability of a rise the prediction stated for that horizon: the signal's
  P(up); for a forecast hour, its ``confidence`` (P(direction)) turned toward the predicted
  side (``confidence`` if the predicted price is above the origin, else 1 - ``confidence``).
* ``hit``: the predicted direction was right (None when the prediction had none: a HOLD
  signal still has its P(up) side; a forecast with predicted price equal to the origin none).
* ``brier``: ``(p_up - rose)^2``.
* ``inside``: the outcome fell inside ``[lower, upper]`` (forecast hours only).
* ``pnl_pct``: the return of the position the prediction implies, after a fee on entry and
  exit: long on BUY (or a forecast above the origin), short on SELL (or below); none on HOLD.

:func:`live_figures` groups scored entries by model, kind and horizon; every rate comes with
a standard error clustered by the UTC day of the forecast origin (overlapping forecasts share
outcomes).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np

from core.schemas.live import LiveFigure


def entry_direction(entry: Mapping[str, Any]) -> tuple[float | None, bool | None]:
    """(stated P(up) at the entry's horizon, predicted rise or None) of one entry."""
    if entry["kind"] == "signal":
        p = entry.get("up_probability")
        if p is None:
            return None, None
        return float(p), None if p == 0.5 else bool(p > 0.5)
    predicted, origin = float(entry["predicted_price"]), float(entry["origin_price"])
    if predicted == origin:
        return 0.5, None
    up = predicted > origin
    conf = float(entry["confidence"])
    return (conf if up else 1.0 - conf), up


def _position(entry: Mapping[str, Any], predicted_up: bool | None) -> int:
    if entry["kind"] == "signal":
        return {"BUY": 1, "SELL": -1}.get(str(entry.get("signal")), 0)
    return 0 if predicted_up is None else (1 if predicted_up else -1)


def score_entry(
    entry: Mapping[str, Any], outcome_price: float, scored_at: datetime, *, fee_pct: float = 0.1
) -> dict[str, Any]:
    """The scored copy of ``entry`` given the close at its target time.

    Returns:
        the entry with ``scored`` True and the fields of the module docstring.

    Raises:
        ValueError: a non-positive or non-finite outcome price.
    """
    if not np.isfinite(outcome_price) or outcome_price <= 0:
        raise ValueError(f"outcome price must be a positive number (got {outcome_price})")
    origin = float(entry["origin_price"])
    rose = outcome_price > origin
    p_up, predicted_up = entry_direction(entry)
    side = _position(entry, predicted_up)
    ret_pct = 100.0 * (outcome_price / origin - 1.0)
    out = dict(entry)
    out.update(
        scored=True,
        scored_at=scored_at,
        outcome_price=float(outcome_price),
        rose=rose,
        p_up=p_up,
        hit=None if predicted_up is None else predicted_up == rose,
        brier=None if p_up is None else (p_up - float(rose)) ** 2,
        pnl_pct=None if side == 0 else side * ret_pct - 2.0 * fee_pct,
    )
    if entry["kind"] == "price":
        out["inside"] = bool(entry["lower"] <= outcome_price <= entry["upper"])
    return out


def clustered_mean(values: Sequence[float], clusters: Sequence[Any]) -> tuple[float, float | None]:
    """Mean of ``values`` and its cluster-robust standard error.

    ``se^2 = sum_g (sum_{i in g} (x_i - mean))^2 / n^2`` (equal to the usual ``s / sqrt(n)``,
    up to ``n / (n - 1)``, when every cluster holds one value).

    Returns:
        (mean, standard error; None with fewer than two clusters).
    """
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    sums: dict[Any, float] = defaultdict(float)
    for v, g in zip(x - mean, clusters, strict=True):
        sums[g] += float(v)
    if len(sums) < 2:
        return mean, None
    g = len(sums)
    var = sum(s * s for s in sums.values()) / len(x) ** 2 * g / (g - 1)
    return mean, float(np.sqrt(var))


def _day(entry: Mapping[str, Any]) -> str:
    return f"{entry['origin_time']:%Y-%m-%d}"


def _mean_se(rows: list[Mapping[str, Any]], field: str) -> tuple[float | None, float | None]:
    kept = [r for r in rows if r.get(field) is not None]
    if not kept:
        return None, None
    return clustered_mean([float(r[field]) for r in kept], [_day(r) for r in kept])


def figure_of(rows: list[Mapping[str, Any]]) -> LiveFigure:
    """Live figures of scored entries of one model, kind and horizon (see :class:`LiveFigure`).

    Raises:
        ValueError: ``rows`` is empty.
    """
    if not rows:
        raise ValueError("no scored entries to summarise")
    first = rows[0]
    hit, hit_se = _mean_se(rows, "hit")
    brier, brier_se = _mean_se(rows, "brier")
    cov, cov_se = _mean_se(rows, "inside") if first["kind"] == "price" else (None, None)
    pnl, pnl_se = _mean_se(rows, "pnl_pct")
    up_share = float(np.mean([bool(r["rose"]) for r in rows]))
    confs = [float(r["confidence"]) for r in rows if r.get("confidence") is not None]
    targets = [r["target_time"] for r in rows]
    return LiveFigure(
        model_id=str(first["model_id"]),
        model_version=first.get("model_version"),
        symbol=str(first["symbol"]),
        kind=str(first["kind"]),
        hour=int(first["hour"]),
        scored=len(rows),
        first_target=min(targets),
        last_target=max(targets),
        hit_rate=hit,
        hit_rate_se=hit_se,
        majority_rate=max(up_share, 1.0 - up_share),
        brier=brier,
        brier_se=brier_se,
        brier_baseline=up_share * (1.0 - up_share),
        mean_confidence=float(np.mean(confs)) if confs and first["kind"] == "price" else None,
        coverage=cov,
        coverage_se=cov_se,
        trades=sum(r.get("pnl_pct") is not None for r in rows),
        pnl_mean_pct=pnl,
        pnl_se_pct=pnl_se,
    )


def live_figures(scored: Iterable[Mapping[str, Any]]) -> list[LiveFigure]:
    """:func:`figure_of` for every (model, kind, horizon) of ``scored``, sorted by those."""
    groups: dict[tuple[str, str, int], list[Mapping[str, Any]]] = defaultdict(list)
    for r in scored:
        if r.get("scored"):
            groups[(str(r["model_id"]), str(r["kind"]), int(r["hour"]))].append(r)
    return [figure_of(groups[k]) for k in sorted(groups)]


def calibration_table(
    scored: Iterable[Mapping[str, Any]], bins: Sequence[float] = (0.5, 0.55, 0.6, 0.7, 1.0001)
) -> list[dict[str, float]]:
    """Stated confidence against realised hit rate, by confidence bin (entries with a
    direction only): ``{low, high, n, mean_confidence, hit_rate, se}`` per non-empty bin."""
    rows = [r for r in scored if r.get("hit") is not None and r.get("p_up") is not None]
    conf = np.array([max(r["p_up"], 1 - r["p_up"]) for r in rows])
    out = []
    for lo, hi in zip(bins, bins[1:], strict=False):
        sel = [r for r, c in zip(rows, conf, strict=True) if lo <= c < hi]
        if not sel:
            continue
        hit, se = clustered_mean([float(r["hit"]) for r in sel], [_day(r) for r in sel])
        mean_c = float(np.mean([max(r["p_up"], 1 - r["p_up"]) for r in sel]))
        out.append(
            {"low": lo, "high": hi, "n": len(sel), "mean_confidence": mean_c, "hit_rate": hit}
            | ({"se": se} if se is not None else {})
        )
    return out
