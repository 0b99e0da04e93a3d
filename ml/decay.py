"""The decay rule: does a deployed model still earn its place on live predictions? (pure)

Two tests on the model's scored ledger entries; either fires the rule:

* **Direction.** Over the newest ``window_entries`` scored predictions with a direction (the
  forecast hour equal to the model's own horizon, and bulk-analysis signals), the hit rate's
  one-sided 95 % upper confidence bound plus ``min_edge`` is compared with the majority-class
  baseline of the same outcomes. Fires when the bound is not above it:
  ``hit + 1.645 * se < majority + min_edge``, i.e. the model has not shown an edge of
  ``min_edge`` over always betting on the more frequent direction. Not judged below
  ``window_entries`` predictions (a new model is not condemned on a handful of hours).
  With the defaults (2,000 predictions, ``min_edge`` 0.04; standard error 0.011 for
  independent hours) a coin-flip model fires with probability ~97 % (its bound is 0.5 + the
  noise + 0.018, the threshold 0.54), one with a real 6-point edge with probability < 0.1 %
  (3.4 standard errors away); a 3-point edge is a toss-up: an edge that small does not pay
  a 0.1 % fee per side at one-hour horizons anyway.
* **Coverage.** Over the last ``coverage_days`` of scored forecast hours, the 80 % interval's
  coverage lies outside ``coverage_band`` (0.75-0.85) by more than its own noise: fires when
  the coverage's two-sided 95 % confidence interval (``coverage +- 1.96 * se``) lies wholly
  outside the band, judged from ``min_coverage_pairs`` intervals on. Hourly intervals of one
  day overlap and move together, so a well-calibrated model's coverage over a week wanders
  by several points; a bare band check would flag it on that noise alone.

Standard errors are clustered by the origin's UTC day (:func:`ml.scoring.clustered_mean`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from core.schemas.live import DecayVerdict
from ml.scoring import clustered_mean

Z_95_ONE_SIDED = 1.6449
Z_95_TWO_SIDED = 1.9600


@dataclass(frozen=True)
class DecayRule:
    """The rule's settings (see the module docstring)."""

    window_entries: int = 2000
    min_edge: float = 0.04
    coverage_days: float = 7.0
    coverage_band: tuple[float, float] = (0.75, 0.85)
    min_coverage_pairs: int = 200


def _direction_rows(scored: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    rows = [
        r
        for r in scored
        if r.get("hit") is not None
        and (r["kind"] == "signal" or int(r["hour"]) == int(r.get("model_horizon_bars") or 1))
    ]
    return sorted(rows, key=lambda r: r["target_time"])


def judge(
    model_id: str,
    symbol: str,
    scored: Sequence[Mapping[str, Any]],
    now: datetime,
    rule: DecayRule | None = None,
) -> DecayVerdict:
    """Apply the decay rule to the scored entries of one model.

    Args:
        scored: the model's scored ledger entries (any order; unscored ones are ignored).
        now: the end of the coverage window.

    Returns:
        a :class:`DecayVerdict` (``decayed`` with its reasons, and the figures judged).
    """
    rule = rule or DecayRule()
    scored = [r for r in scored if r.get("scored")]
    reasons: list[str] = []
    notes: list[str] = []
    rows = _direction_rows(scored)[-rule.window_entries :]
    hit = ucb = majority = None
    if len(rows) >= rule.window_entries:
        hit, se = clustered_mean(
            [float(r["hit"]) for r in rows], [f"{r['origin_time']:%Y-%m-%d}" for r in rows]
        )
        if se is None:  # one day only: independent draws at worst
            se = float(np.sqrt(max(hit * (1 - hit), 0.25 / len(rows)) / len(rows)))
        up = float(np.mean([bool(r["rose"]) for r in rows]))
        majority = max(up, 1.0 - up)
        ucb = hit + Z_95_ONE_SIDED * se
        if ucb < majority + rule.min_edge:
            reasons.append(
                f"hit rate {hit:.3f} (95 % upper bound {ucb:.3f}) over the last {len(rows)} "
                f"predictions shows no edge of {rule.min_edge:.2f} over the majority "
                f"direction's {majority:.3f}"
            )
    else:
        notes.append(
            f"direction not judged: {len(rows)} of {rule.window_entries} scored predictions"
        )
    since = now - timedelta(days=rule.coverage_days)
    inside = [r for r in scored if r.get("inside") is not None and r["target_time"] >= since]
    cov = cov_se = None
    if len(inside) >= rule.min_coverage_pairs:
        cov, cov_se = clustered_mean(
            [float(r["inside"]) for r in inside], [f"{r['origin_time']:%Y-%m-%d}" for r in inside]
        )
        lo, hi = rule.coverage_band
        if cov_se is None:  # one day only: independent draws at worst
            cov_se = float(np.sqrt(max(cov * (1 - cov), 0.25 / len(inside)) / len(inside)))
        margin = Z_95_TWO_SIDED * cov_se
        if cov + margin < lo or cov - margin > hi:
            reasons.append(
                f"80 % interval coverage {cov:.3f} +- {margin:.3f} (95 %) over {len(inside)} "
                f"hours of the last {rule.coverage_days:g} days is outside {lo:.2f}-{hi:.2f}"
            )
    elif inside or any(r["kind"] == "price" for r in scored):
        notes.append(
            f"coverage not judged: {len(inside)} of {rule.min_coverage_pairs} scored intervals"
        )
    return DecayVerdict(
        model_id=model_id,
        symbol=symbol,
        decayed=bool(reasons),
        reasons=reasons,
        direction_scored=len(rows),
        hit_rate=hit,
        hit_rate_ucb=ucb,
        majority_rate=majority,
        coverage_pairs=len(inside),
        coverage=cov,
        coverage_se=cov_se,
        note="; ".join(notes),
    )
