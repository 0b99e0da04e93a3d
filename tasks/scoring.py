"""Prefect tasks of the prediction ledger: record served predictions, score them, publish.

Recording is part of serving: predict-price and bulk-analysis write their entries before
their result is saved (acknowledged), with retries on temporary store errors; if the ledger
cannot take them the run fails and no client ever sees a prediction the ledger lacks. The
ledger lives in the same database as the results, so a refused ledger write would have
refused the result too; entry ids come from the run id, so a retried run writes nothing twice.
"""

from __future__ import annotations

import base64
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE
from prefect.tasks import exponential_backoff

from core.market import bar_length
from core.schemas.analysis import PredictPriceResult
from core.schemas.live import ModelLiveScores, ScorePredictionsParams
from integrations.store import Store
from ml.decay import DecayRule, judge
from ml.live_charts import fan_chart_png, live_chart_png
from ml.scoring import live_figures, score_entry
from tasks.retry import retry_only_retryable

_RETRY: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(2),
    "retry_condition_fn": retry_only_retryable,
    "cache_policy": NONE,
}


def _png_markdown(png: bytes, alt: str) -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode('ascii')})"


@task(name="record-predictions", **_RETRY)
def record_predictions(store: Store, entries: Sequence[Mapping[str, Any]]) -> int:
    """Write ``entries`` to the prediction ledger (safe to repeat).

    Returns:
        how many were new.

    Raises:
        StoreUnavailableError (retried), StoreError: the ledger did not take them.
    """
    return store.ledger.entries_record(entries)


@task(name="score-due-entries", **_RETRY)
def score_due_entries(store: Store, now: datetime, fee_pct: float, limit: int) -> dict[str, int]:
    """Score every unscored entry whose outcome candle has closed by ``now`` and is stored.

    Returns:
        ``{due, scored, waiting, already_scored}`` counts.

    Raises:
        StoreUnavailableError (retried): MongoDB unreachable.
    """
    due = store.ledger.entries_due(now, limit=limit)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for e in due:
        if pd.Timestamp(e["target_time"]) + bar_length(e["timeframe"]) <= pd.Timestamp(now):
            groups[(e["symbol"], e["timeframe"])].append(e)
    copies: list[dict[str, Any]] = []
    for (symbol, timeframe), entries in groups.items():
        targets = [e["target_time"] for e in entries]
        candles = store.load_candles(symbol, timeframe, start=min(targets), end=max(targets))
        close = candles["close"] if not candles.empty else pd.Series(dtype=float)
        for e in entries:
            t = pd.Timestamp(e["target_time"])
            if t not in close.index:
                continue  # the outcome candle has not arrived: scored by a later run
            copies.append(score_entry(e, float(close.loc[t]), now, fee_pct=fee_pct))
    scored = store.ledger.entries_mark_scored(copies)  # batched; each entry scored once
    already = len(copies) - scored
    return {
        "due": len(due),
        "scored": scored,
        "waiting": len(due) - scored - already,
        "already_scored": already,
    }


@task(name="judge-models", **_RETRY)
def judge_models(
    store: Store, now: datetime, params: ScorePredictionsParams, since: datetime
) -> list[tuple[ModelLiveScores, list[dict[str, Any]]]]:
    """Live figures and the decay verdict of every model with an entry scored since
    ``since``, each stored in ``model_live_scores``.

    Returns:
        ``(scores, the model's scored entries)`` per model, by model id.
    """
    rule = DecayRule(
        window_entries=params.window_entries,
        min_edge=params.min_edge,
        coverage_days=params.coverage_days,
        min_coverage_pairs=params.min_coverage_pairs,
    )
    out = []
    for model_id in store.ledger.scored_model_ids(since):
        rows = store.ledger.entries_find(
            {"model_id": model_id, "scored": True}, newest_first=True, limit=200_000
        )
        first = rows[0]
        scores = ModelLiveScores(
            model_id=model_id,
            model_version=first.get("model_version"),
            symbol=first["symbol"],
            created_at=now,
            figures=live_figures(rows),
            decay=judge(model_id, first["symbol"], rows, now, rule),
        )
        store.ledger.live_scores_save(scores.model_dump())
        out.append((scores, rows))
    return out


def _figures_table(scores: ModelLiveScores) -> str:
    def f(v: float | None, se: float | None = None) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" + (f" ± {se:.3f}" if se is not None else "")

    lines = [
        "| kind | hour | scored | hit rate | majority | Brier (baseline) | confidence "
        "| coverage | trades | P&L/trade after fees % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in scores.figures:
        lines.append(
            f"| {g.kind} | {g.hour} | {g.scored} | {f(g.hit_rate, g.hit_rate_se)} "
            f"| {f(g.majority_rate)} | {f(g.brier, g.brier_se)} ({f(g.brier_baseline)}) "
            f"| {f(g.mean_confidence)} | {f(g.coverage, g.coverage_se)} | {g.trades} "
            f"| {f(g.pnl_mean_pct, g.pnl_se_pct)} |"
        )
    return "\n".join(lines)


@task(name="publish-live-scores", cache_policy=NONE)
def publish_live_scores(
    judged: Sequence[tuple[ModelLiveScores, list[dict[str, Any]]]], counts: Mapping[str, int]
) -> None:
    """One markdown artifact (key ``live-model-scores``): counts, each model's figures and
    decay verdict, and its chart of daily hit rate and coverage."""
    parts = [
        f"# Live model figures\n\nScored {counts['scored']} of {counts['due']} due predictions "
        f"({counts['waiting']} wait for their outcome candle).\n",
        "Standard errors are clustered by the forecast's origin day.\n",
    ]
    for scores, rows in judged:
        d = scores.decay
        verdict = "DECAYED: " + "; ".join(d.reasons) if d.decayed else "no decay"
        parts.append(
            f"\n## {scores.model_id} ({scores.symbol}, version {scores.model_version})\n\n"
            f"{verdict}{' (' + d.note + ')' if d.note else ''}\n\n{_figures_table(scores)}\n"
        )
        direction = [
            r
            for r in rows
            if r.get("hit") is not None
            and (r["kind"] == "signal" or r["hour"] == (r.get("model_horizon_bars") or 1))
        ]
        intervals = [r for r in rows if r.get("inside") is not None]
        png = live_chart_png(scores.model_id, direction, intervals)
        parts.append("\n" + _png_markdown(png, f"live record of {scores.model_id}") + "\n")
    create_markdown_artifact(
        "".join(parts), key="live-model-scores", description="Models' live figures from the ledger"
    )


@task(name="publish-fan-chart", cache_policy=NONE)
def publish_fan_chart(result: PredictPriceResult, candles: pd.DataFrame, bars: int = 96) -> None:
    """Markdown artifact (key ``price-forecast-<symbol>``): the forecast's fan chart."""
    png = fan_chart_png(result, candles["close"].iloc[-bars:])
    last = result.predictions[-1]
    create_markdown_artifact(
        f"# {result.symbol} forecast, {result.horizon_hours} h\n\n"
        f"Last close {result.last_price:.2f}; hour {last.hour}: {last.predicted_price:.2f} "
        f"[{last.lower:.2f}, {last.upper:.2f}] ({result.interval_level:.0%} interval), "
        f"P(direction) {last.confidence:.3f}.\n\n"
        + _png_markdown(png, "fan chart: recent closes, predicted path, interval band"),
        key=f"price-forecast-{result.symbol.lower()}",
        description=f"{result.symbol} price forecast fan chart",
    )
    get_run_logger().info("fan chart of %s published (%d bytes)", result.symbol, len(png))
