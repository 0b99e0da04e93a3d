"""Walk-forward on real BTC hours with monthly retrains, the real deploy rule and the ledger.

Run: ``.venv/bin/python bench/bench_walk_forward.py [--months 6] [--epochs 100] [--seed 1]``.

Real Coinbase BTC/USD hours (``../shared/data``). For each month of the test period (from
``--first`` 2019-01 to the last complete month of the file; ``--months N``: the first N):

1. Retrain: train-model's own lifecycle (``ml.lifecycle.train_and_register``: the 365 days
   before the month start, the newest 20 % held out, lstm, lookback 24, horizon 1 h, batch 64,
   lr 1e-3, 32 units, best validation epoch kept; ``--epochs`` shrinks the 100 epochs) with
   the deploy rule of the settings (``BOTAI_DEPLOY_RULE``, default both: accuracy and the
   economic test after the settings' fee) against the model deployed now; the first month's
   candidate competes with the baselines only. Registry, ledger and jobs live in a private
   nx-27017 store in a temporary folder, stopped at the end.
2. Serve the month with the DEPLOYED model (none yet: "no model served"): a predict-price
   forecast of hours 1-24 every ``--origin-every`` hours and a bulk-analysis signal every
   hour (``tests.ml.ledger_helpers``: the flows' own ``predict_prices``, ``signal_from_score``
   and ledger entries), scored by the scoring flow's ``score_due_entries``. The month's new
   model's signals are also recorded and scored in the shadow, deployed or not.
3. Coverage of the 80 % interval, hours 1-24, at the same origins (``ml.forecast.
   coverage_pairs``): calibration FROZEN at the month's first origin (quantiles from the hours
   before it, unchanged all month; the regime scale, product default, still follows the recent
   hours; also shown without it), and ROLLING (each origin calibrates on the hours before
   it, as every request does), beside the served forecasts' own ledger coverage.

Printed over all months, standard errors clustered by origin day (``ml.scoring.
clustered_mean``): deployed share, live hit rate of the served signals against the majority
class of each month's training labels and logistic regression retrained every month on the
same split, the coverages, and long/flat P&L after the settings' fee (0.1 % per side) against
buy-and-hold over the served hours (``ml.economics``: block bootstrap, blocks of 24 h). The
machine load is printed beside every timing. ``--budget-min`` starts no month after that many
minutes (the summary covers the months done). 20 epochs: 7 min for nine months with nothing
deployed; with models served, scoring dominates (70-360 s a month). Figures: docs/ml.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.bench_training import load_btc_hours  # noqa: E402

if TYPE_CHECKING:
    from core.schemas.training import TrainModelParams
    from ml.economics import EconomicsConfig

#: (origin day, value) rows: the day clusters every standard error
Rows = list[tuple[str, float]]

SYMBOL, HOURS = "BTCUSD", list(range(1, 25))
#: Candles predict-price loads: calibration window 2,160 + horizon 24 + coverage 720 + 1.
SERVE_CONTEXT = 2905


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f} on {os.cpu_count()} cores"


@dataclass
class Month:
    """One month of the walk-forward and what was measured in it."""

    label: str
    start: int
    end: int
    deployed: bool = False
    decision: str = ""
    served_by: str | None = None
    lines: list[str] = field(default_factory=list)
    #: served signals: hit of the model, of the majority class, of logistic regression
    signals: dict[str, Rows] = field(default_factory=dict)
    #: the month's candidate's signals, served in the shadow whether deployed or not
    shadow: dict[str, Rows] = field(default_factory=dict)
    p_shadow: np.ndarray | None = None
    #: (origin, hour) pairs inside the 80 % interval: served (ledger) and replayed per mode
    served_pairs: Rows = field(default_factory=list)
    replay: dict[str, Rows] = field(default_factory=dict)
    p_model: np.ndarray | None = None
    p_lr: np.ndarray | None = None
    ledger_pnl: Rows = field(default_factory=list)


def months_of(candles: pd.DataFrame, first: str, limit: int | None) -> list[Month]:
    """The complete calendar months from ``first`` on (``limit``: the first N).

    Raises:
        ValueError: no complete month from ``first`` with 365 days of hours before it.
    """
    index = pd.DatetimeIndex(candles.index)
    starts = pd.date_range(pd.Timestamp(first, tz="UTC"), index[-1], freq="MS")
    out = []
    for a, b in zip(starts, starts[1:], strict=False):
        if index[-1] < b + pd.Timedelta(hours=24):  # hour 24 of the last origin must be known
            break
        out.append(Month(f"{a:%Y-%m}", int(index.searchsorted(a)), int(index.searchsorted(b))))
    if not out or out[0].start < 365 * 24 + SERVE_CONTEXT:
        raise ValueError(f"no complete month from {first} with a year of hours before it")
    return out[:limit] if limit else out


def baselines_of(
    params: TrainModelParams, train: pd.DataFrame, frame: pd.DataFrame, ends: np.ndarray
) -> dict[str, np.ndarray]:
    """P(up) of the majority class and of logistic regression fitted on the month's own
    training split (train-model's split: ``ml.lifecycle.split_data``) at ``frame`` rows
    ``ends``. Returns ``{"majority_class": p, "logistic_regression": p}``."""
    from ml.features import inference_windows
    from ml.lifecycle import Start, split_data
    from ml.metrics import baseline_probabilities

    _, ds = split_data(train, params, Start(None, False, None, None, params.units))
    windows, have = inference_windows(frame, ds.spec)
    row = {int(e): i for i, e in enumerate(have)}
    return baseline_probabilities(ds.x_train, ds.y_train, windows[[row[int(e)] for e in ends]])


def ledger_signals(
    store: Any, prefix: str, lead: int, base: dict[str, np.ndarray]
) -> tuple[np.ndarray, dict[str, Rows], Rows]:
    """The month's signal entries of run ``prefix`` read back from the ledger.

    Returns:
        (P(up) per hour of the month, NaN where none; hit rows of the model, the majority
        class and logistic regression on the scored hours; the ledger's P&L per trade).
    """
    n = len(base["majority_class"])
    ids = [f"{prefix}-{t}" for t in range(lead, lead + n)]
    rows = store.ledger.entries_find({"task_id": {"$in": ids}, "kind": "signal"})
    pos = np.array([int(e["task_id"].rsplit("-", 1)[1]) - lead for e in rows], dtype=int)
    p_up = np.full(n, np.nan)
    p_up[pos] = [e["up_probability"] for e in rows]
    hits: dict[str, Rows] = {"model": [], "majority class": [], "logistic regression": []}
    pnl: Rows = []
    for e, i in zip(rows, pos, strict=True):
        day = f"{e['origin_time']:%Y-%m-%d}"
        if e.get("scored") and e.get("hit") is not None:
            rose = bool(e["rose"])
            hits["model"].append((day, float(e["hit"])))
            for name, key in (("majority class", "majority_class"),
                              ("logistic regression", "logistic_regression")):  # fmt: skip
                hits[name].append((day, float((base[key][i] >= 0.5) == rose)))
        if e.get("pnl_pct") is not None:
            pnl.append((day, float(e["pnl_pct"])))
    return p_up, hits, pnl


def run_month(
    ctx: dict[str, Any], m: Month, params: TrainModelParams, candles: pd.DataFrame, every: int
) -> None:
    """Retrain, decide, serve, score and measure one month (fills ``m``)."""
    from core.schemas.live import ScorePredictionsParams
    from ml.forecast import ForecastConfig, coverage_pairs
    from ml.lifecycle import train_and_register
    from ml.predictor import WARMUP_BARS
    from ml.training_jobs import new_job
    from tasks.scoring import score_due_entries
    from tests.ml.ledger_helpers import serve_forecasts, serve_signals

    store, registry, settings = ctx["store"], ctx["registry"], ctx["settings"]
    train = candles.iloc[m.start - params.days_of_data * 24 : m.start]
    run_id = f"wf-{m.label}"
    t0 = time.perf_counter()
    result = train_and_register(
        store,
        params,
        train,
        run_id,
        new_job(params, run_id),
        registry=registry,
        checkpoints=ctx["checkpoints"],
        min_free_disk_gb=0.5,
        checkpoint_every_s=None,
        deploy_rule=settings.deploy_rule,
        economics=ctx["economics"],
    )
    d, r = result.deployment, result.training_results
    ctx["trained_for"][result.model_id] = m.label
    m.deployed = d.deployed
    others = ", ".join(f"{c.name} {c.accuracy:.3f}" for c in d.comparisons)
    returns = ", ".join(
        f"{s.name} {s.total_return_pct.value:+.1f}%" for s in result.economics.strategies
    )
    m.decision = f"{'DEPLOYED' if d.deployed else d.outcome} (decided by {d.decided_by})"
    m.lines.append(
        f"trained in {time.perf_counter() - t0:.0f} s ({_load()}), best epoch {r.best_epoch} of "
        f"{r.epochs_completed}; {d.holdout_samples} held-out hours {d.holdout_start:%Y-%m-%d} .. "
        f"{d.holdout_end:%Y-%m-%d}: accuracy {d.candidate_accuracy:.3f} vs {others}; after fees "
        f"{returns}: {m.decision}"
    )
    current = registry.deployed(SYMBOL, "1h", params.model_type)
    lead = params.lookback + WARMUP_BARS
    sig_frame = candles.iloc[m.start - lead : m.end]
    close = candles["close"].to_numpy(np.float64)[m.start - SERVE_CONTEXT : m.end + 24]
    origins = np.arange(SERVE_CONTEXT, SERVE_CONTEXT + m.end - m.start, every)
    day = np.array(
        [f"{t:%Y-%m-%d}" for t in candles.index[m.start - SERVE_CONTEXT :][: len(close)]]
    )
    tilt = np.full(len(close), np.nan)
    base = baselines_of(params, train, sig_frame, np.arange(lead, len(sig_frame)))
    m.p_lr = base["logistic_regression"]
    t1, n_fc = time.perf_counter(), 0
    candidate = registry.load(registry.get(result.model_id))
    serve_signals(store, candidate, sig_frame, lead, f"shadow-{m.label}")
    if current is not None:
        m.served_by = f"{current.model_id} ({ctx['trained_for'][current.model_id]}'s)"
        model = registry.load(current)
        frame = candles.iloc[m.start - SERVE_CONTEXT : m.end]
        n_fc = serve_forecasts(store, model, frame, origins, 24, f"fc-{m.label}")
        serve_signals(store, model, sig_frame, lead, f"sig-{m.label}")
    t2 = time.perf_counter()
    scoring = ScorePredictionsParams()  # the scoring flow's defaults (fee 0.1 % per side)
    counts = score_due_entries.fn(store, datetime.now(UTC), scoring.fee_pct, 50_000)
    m.lines.append(
        f"served in {t2 - t1:.0f} s ({m.served_by or 'no model served'}"
        f"{f': {n_fc} forecast hours' if current else ''}; the candidate's signals in the "
        f"shadow), {counts['scored']} entries scored in {time.perf_counter() - t2:.0f} s "
        f"({_load()})"
    )
    m.p_shadow, m.shadow, _ = ledger_signals(store, f"shadow-{m.label}", lead, base)
    if current is not None:
        m.p_model, m.signals, m.ledger_pnl = ledger_signals(store, f"sig-{m.label}", lead, base)
        tilt[SERVE_CONTEXT : SERVE_CONTEXT + len(m.p_model)] = m.p_model
        ids = [f"fc-{m.label}-{int(t)}" for t in origins]
        rows = store.ledger.entries_find({"task_id": {"$in": ids}, "scored": True})
        m.served_pairs = [(f"{e['origin_time']:%Y-%m-%d}", float(e["inside"])) for e in rows]
    modes = {  # name: (config, calibration frozen at the month's first origin)
        "frozen": (ForecastConfig(), SERVE_CONTEXT),
        "rolling": (ForecastConfig(), None),
        "frozen, no regime scale": (ForecastConfig(regime_bars=0), SERVE_CONTEXT),
    }
    for name, (config, frozen_at) in modes.items():
        pairs = coverage_pairs(
            close,
            origins,
            HOURS,
            up_probabilities=tilt,
            config=config,
            calibration_frozen_at=frozen_at,
        )
        m.replay[name] = list(zip(day[pairs.origins], pairs.inside.astype(float), strict=True))


def _fmt(rows: Rows) -> str:
    """Mean ± standard error clustered by origin day (``ml.scoring.clustered_mean``)."""
    from ml.scoring import clustered_mean

    if not rows:
        return "-"
    mean, se = clustered_mean([v for _, v in rows], [d for d, _ in rows])
    return f"{mean:.3f} ± {se:.3f}" if se is not None else f"{mean:.3f}"


def _hit_lines(title: str, hits: list[dict[str, Rows]]) -> None:
    """Hit rate of the model's signals and of each baseline on the same hours, with the
    paired difference, all clustered by origin day."""
    pooled = {k: [r for h in hits for r in h[k]] for k in hits[0]} if hits else {}
    if not pooled or not pooled["model"]:
        return
    model = pooled.pop("model")
    print(f"{title}: hit rate of {len(model):,} hourly signals {_fmt(model)}")
    for name, rows in pooled.items():
        diff = [(d, a - b) for (d, a), (_, b) in zip(model, rows, strict=True)]
        print(f"  {name} {_fmt(rows)}; model - it (paired) {_fmt(diff)}")


def _pnl(months: list[Month], p_of: str, candles: pd.DataFrame, economics: EconomicsConfig) -> Any:
    """Long/flat P&L after fees (``ml.economics``) of the P(up) ``p_of`` of ``months``
    (consecutive) beside buy-and-hold and logistic regression on the same hours."""
    from ml.economics import MODEL, evaluate_economics

    a, b = months[0].start, months[-1].end
    p_up = {MODEL: np.full(b - a, np.nan), "logistic_regression": np.full(b - a, np.nan)}
    for m in months:
        p_up[MODEL][m.start - a : m.end - a] = getattr(m, p_of)
        p_up["logistic_regression"][m.start - a : m.end - a] = m.p_lr
    return evaluate_economics(candles.iloc[a:b], p_up, economics)


def _pnl_lines(title: str, ev: Any) -> None:
    print(f"{title}: long/flat over {ev.bars:,} hours, fee {ev.fee_bps:g} bps per side, SE "
          f"from {ev.bootstrap_samples} resamples of {ev.block_bars} h blocks")  # fmt: skip
    for s in ev.strategies:
        f = s.total_return_pct
        print(f"  {s.name:20s} {f.value:+7.1f}% ± {f.standard_error:5.1f}  before costs "
              f"{s.return_before_costs_pct:+7.1f}%  trades {s.turnover_trades.value:.0f}")  # fmt: skip
    for c in ev.comparisons:
        print(f"  model - {c.name}: {c.difference_pct:+.1f} ± {c.standard_error:.1f} points")


def summary(months: list[Month], candles: pd.DataFrame, economics: EconomicsConfig) -> None:
    """Print the per-month table and the figures over all months."""
    from ml.economics import MODEL
    from ml.scoring import clustered_mean

    print("\n| month | decision | served by | served signals' hit (model / majority / LR) | "
          "coverage frozen / rolling / served | return % served / buy-and-hold | candidate's "
          "shadow hit, return % |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for m in months:
        hits = " / ".join(_fmt(v) for v in m.signals.values()) if m.signals else "-"
        cov = " / ".join(_fmt(r) for r in (m.replay["frozen"], m.replay["rolling"], m.served_pairs))
        ret = "-"
        shadow = {
            x.name: x.total_return_pct.value
            for x in _pnl([m], "p_shadow", candles, economics).strategies
        }
        if m.p_model is not None:
            s = {
                x.name: x.total_return_pct.value
                for x in _pnl([m], "p_model", candles, economics).strategies
            }
            ret = f"{s[MODEL]:+.1f} / {s['buy_and_hold']:+.1f}"
        print(f"| {m.label} | {m.decision} | {m.served_by or 'no model served'} | {hits} | "
              f"{cov} | {ret} | {_fmt(m.shadow['model'])}, {shadow[MODEL]:+.1f} |")  # fmt: skip
    n = len(months)
    share, share_se = clustered_mean([float(m.deployed) for m in months], [m.label for m in months])
    served = [m for m in months if m.served_by]
    print(
        f"\nover {n} months {months[0].label} .. {months[-1].label}: deployed share "
        f"{share:.3f} ± {share_se or 0:.3f} ({sum(m.deployed for m in months)} of {n} months a "
        f"new model was deployed); {len(served)} months served, "
        f"{n - len(served)} with no model served"
    )
    _hit_lines("served signals (the deployed model's)", [m.signals for m in served])
    for name in ("frozen", "rolling", "frozen, no regime scale"):
        rows = [r for m in months for r in m.replay[name]]
        print(f"80% coverage hours 1-24, {name} (all months, {len(rows):,} pairs): {_fmt(rows)}")
    rows = [r for m in served for r in m.served_pairs]
    if rows:
        print(f"80% coverage hours 1-24, served forecasts in the ledger ({len(rows):,}): "
              f"{_fmt(rows)}; frozen on the same months "
              f"{_fmt([r for m in served for r in m.replay['frozen']])}")  # fmt: skip
        pnl = [r for m in served for r in m.ledger_pnl]
        n_sig = sum(len(m.signals["model"]) for m in served)
        print(f"ledger P&L per BUY/SELL signal after fees %: {_fmt(pnl)} ({len(pnl):,} of "
              f"{n_sig:,} served signals were BUY or SELL; a HOLD trades nothing)")  # fmt: skip
        _pnl_lines("served signals", _pnl(served, "p_model", candles, economics))
    _hit_lines("each month's candidate in the shadow, deployed or not", [m.shadow for m in months])
    _pnl_lines("candidates in the shadow", _pnl(months, "p_shadow", candles, economics))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", default="2019-01", help="first test month (YYYY-MM)")
    parser.add_argument("--months", type=int, default=None, help="only the first N months")
    parser.add_argument("--epochs", type=int, default=100, help="train-model's default: 100")
    parser.add_argument("--seed", type=int, default=1, help="training seed (every month)")
    parser.add_argument("--model-type", default="lstm")
    parser.add_argument("--origin-every", type=int, default=6, help="hours between forecasts")
    parser.add_argument("--budget-min", type=float, default=None, help="start no month after")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from core.schemas.training import TrainModelParams
    from core.settings import load_settings
    from integrations.embedded_mongo import start_embedded_mongo
    from integrations.store import Store, connect
    from ml.checkpoints import CheckpointStore
    from ml.economics import EconomicsConfig
    from ml.registry import ModelRegistry

    settings = load_settings()
    candles = load_btc_hours(settings.data_dir)
    months = months_of(candles, args.first, args.months)
    params = TrainModelParams(
        model_type=args.model_type, symbol=SYMBOL, epochs=args.epochs, seed=args.seed
    )
    economics = EconomicsConfig(
        fee_bps=settings.economics_fee_bps,
        slippage_bps=settings.economics_slippage_bps,
        block_bars=settings.economics_block_bars,
        bootstrap_samples=settings.economics_bootstrap_samples,
    )
    print(
        f"real BTC/USD 1h: {len(candles):,} bars to {candles.index[-1]:%Y-%m-%d %H:%M}; "
        f"{len(months)} months {months[0].label} .. {months[-1].label}; {args.model_type}, "
        f"{args.epochs} epochs, seed {args.seed}, deploy rule {settings.deploy_rule}, fee "
        f"{economics.fee_bps:g} bps, forecasts every {args.origin_every} h ({_load()})"
    )
    tmp = Path(tempfile.mkdtemp(prefix="bench-wf-"))
    mongo = start_embedded_mongo(tmp / "mongo")
    started, done = time.monotonic(), []
    try:
        store = Store(connect(mongo.uri), "walkforward")
        store.ensure_indexes()
        store.upsert_candles(SYMBOL, "1h", candles.iloc[months[0].start - 400 :], source="csv")
        key = os.urandom(32)  # the model store's AES-256 key (a fresh one for the bench)
        (tmp / "models").mkdir()
        ctx = {
            "store": store,
            "settings": settings,
            "economics": economics,
            "registry": ModelRegistry(store, tmp / "models", key),
            "checkpoints": CheckpointStore(tmp / "ckpt", args.model_type, SYMBOL, "1h", key),
            "trained_for": {},
        }
        for m in months:
            if args.budget_min and time.monotonic() - started > args.budget_min * 60:
                print(f"budget of {args.budget_min:g} min spent: stopping before {m.label}")
                break
            run_month(ctx, m, params, candles, args.origin_every)
            done.append(m)
            print(f"{m.label}: " + "\n  ".join(m.lines), flush=True)
    finally:
        mongo.stop()
    if done:
        summary(done, candles, economics)
    print(f"total {time.monotonic() - started:.0f} s ({_load()})")


if __name__ == "__main__":
    main()
