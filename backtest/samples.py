"""In-sample and out-of-sample figures of an optimisation (pure: no Prefect import).

A parameter set chosen as the best of many on some bars looks better on those bars than it
will on new ones. Every optimisation figure is therefore labelled with its sample:

* in-sample: measured on the bars the parameters were chosen on;
* out-of-sample: measured on bars the choice never saw (a holdout after the search bars, or
  walk-forward's test windows), with the bars before them only as indicator warm-up.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backtest.engine import run_backtest
from backtest.metrics import compute_metrics, to_datetime
from backtest.strategies import Candles, get_strategy
from core.exceptions import InvalidInputError
from core.schemas.backtest import (
    BacktestConfig,
    BacktestMetrics,
    BacktestResult,
    OptimizationResult,
    OptimizeParameters,
    Sample,
    SampleReport,
    WalkForwardReport,
)

MIN_SEARCH_BARS = 100
MIN_HOLDOUT_BARS = 24


def holdout_start(n_bars: int, holdout_pct: float) -> int:
    """Index of the first held-out bar: the newest ``holdout_pct`` % of ``n_bars``.

    Returns:
        ``n_bars`` when ``holdout_pct`` is 0 (nothing held out).

    Raises:
        InvalidInputError: fewer than 100 search bars or 24 held-out bars would remain.
    """
    if holdout_pct <= 0:
        return n_bars
    held = int(round(n_bars * holdout_pct / 100.0))
    if held < MIN_HOLDOUT_BARS or n_bars - held < MIN_SEARCH_BARS:
        raise InvalidInputError(
            f"holdout_pct {holdout_pct:g} of {n_bars} bars leaves {n_bars - held} search and "
            f"{held} held-out bars; need at least {MIN_SEARCH_BARS} and {MIN_HOLDOUT_BARS}: "
            "choose a longer range or another holdout_pct"
        )
    return n_bars - held


def traded_on(
    candles: Candles,
    strategy_name: str,
    parameters: dict[str, Any],
    start: int,
    end: int,
    config: BacktestConfig | None = None,
) -> BacktestMetrics:
    """Metrics of ``parameters`` traded on bars ``[start, end)``, indicators warmed up on the
    bars before ``start`` (signals use data up to each bar only: no look-ahead).

    Returns:
        the metrics of that slice alone (its own initial capital, buy-and-hold, Sharpe).
    """
    strategy = get_strategy(strategy_name)
    entries, exits = strategy.signals(candles.slice(0, end), strategy.params(parameters))
    run = run_backtest(
        candles.slice(start, end), entries[start:end], exits[start:end], config, checked=True
    )
    return compute_metrics(run)


def sample_report(
    sample: Sample,
    candles: Candles,
    start: int,
    end: int,
    metrics: BacktestMetrics,
    description: str,
) -> SampleReport:
    """A :class:`SampleReport` of bars ``[start, end)`` of ``candles``."""
    return SampleReport(
        sample=sample,
        start=to_datetime(candles.time[start]),
        end=to_datetime(candles.time[end - 1]),
        bars=end - start,
        metrics=metrics,
        description=description,
    )


def label_samples(
    candles: Candles,
    split: int,
    best: BacktestResult,
    walk: WalkForwardReport | None,
    evaluations: int,
    params: OptimizeParameters,
) -> tuple[SampleReport, SampleReport | None, Sample, str]:
    """Label an optimisation's figures by sample and pick the headline.

    Args:
        candles: all bars of the range; ``split``: first held-out bar (``len`` when none).
        best: the best set's backtest on the search bars (``[0, split)``).
        walk: the walk-forward report, if that was the method.

    Returns:
        ``(in_sample, out_of_sample or None, headline sample, headline note)``: the headline
        is out-of-sample whenever there is one (walk-forward's stitched test windows, or the
        holdout), else in-sample with a note saying so.
    """
    n = len(candles)
    in_sample = SampleReport(
        sample="in_sample",
        start=best.start,
        end=best.end,
        bars=best.bars,
        metrics=best.metrics,
        description=(
            f"the last window's choice over the whole range, its {len(walk.windows)} train "
            "windows' bars included"
            if walk is not None
            else f"the best of {evaluations} parameter sets ranked by Sharpe on these same bars"
        ),
    )
    out_of_sample = None
    if walk is not None:
        test_start = np.datetime64(walk.windows[0].test_start.replace(tzinfo=None), "ns")
        out_of_sample = sample_report(
            "out_of_sample",
            candles,
            int(np.searchsorted(candles.time, test_start)),
            n,
            walk.overall_out_of_sample,
            f"{len(walk.windows)} test windows stitched, each traded with the set chosen on "
            f"the {params.wf_train_ratio:g}x longer train window before it",
        )
    elif split < n:
        out_of_sample = sample_report(
            "out_of_sample",
            candles,
            split,
            n,
            traded_on(candles, params.strategy_name, best.parameters, split, n, params.config),
            f"the in-sample best set traded on the newest {params.holdout_pct:g}% of the bars, "
            "which the search never saw (indicators warmed up on the bars before)",
        )
    if out_of_sample is not None:
        return (
            in_sample,
            out_of_sample,
            "out_of_sample",
            (f"Out-of-sample: {out_of_sample.description}."),
        )
    return (
        in_sample,
        None,
        "in_sample",
        (
            f"In-sample: {in_sample.description}, so optimistic; no bars were held out. "
            "Set holdout_pct or use walk_forward for an out-of-sample figure."
        ),
    )


_KEYS = (
    "total_return_pct",
    "sharpe_ratio",
    "max_drawdown_pct",
    "win_rate_pct",
    "total_trades",
    "buy_and_hold_return_pct",
)


def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def optimization_markdown(result: OptimizationResult) -> str:
    """Summary of an optimisation with every figure labelled in- or out-of-sample.

    Returns:
        markdown: the headline (its sample named), a table of in-sample vs out-of-sample
        metrics, and the top in-sample parameter sets.
    """
    label = {"in_sample": "IN-SAMPLE", "out_of_sample": "OUT-OF-SAMPLE"}
    samples = [result.in_sample] + ([result.out_of_sample] if result.out_of_sample else [])
    head = "| metric | " + " | ".join(
        f"{label[s.sample]} ({s.start:%Y-%m-%d} to {s.end:%Y-%m-%d}, {s.bars} bars)"
        for s in samples
    )
    rows = "\n".join(
        f"| {k} | " + " | ".join(_fmt(getattr(s.metrics, k)) for s in samples) + " |" for k in _KEYS
    )
    top = "\n".join(
        f"| {i + 1} | {', '.join(f'{k}={v}' for k, v in e.parameters.items())} | "
        f"{e.sharpe_ratio:.3g} | {e.total_return_pct:.4g} |"
        for i, e in enumerate(result.all_results[:10])
    )
    params = ", ".join(f"{k}={v}" for k, v in result.best_parameters.items())
    return (
        f"# Optimisation {result.method} {result.strategy_name} {result.symbol} "
        f"{result.timeframe}\n\n"
        f"**Headline ({label[result.headline]})**: return "
        f"{result.headline_metrics.total_return_pct:.4g}%, Sharpe "
        f"{result.headline_metrics.sharpe_ratio:.3g}, max drawdown "
        f"{result.headline_metrics.max_drawdown_pct:.4g}%. {result.headline_note}\n\n"
        f"Best parameters: {params} ({result.evaluations} sets evaluated).\n\n"
        f"{head} |\n| --- |{' --- |' * len(samples)}\n{rows}\n\n"
        + "".join(f"- {label[s.sample]}: {s.description}\n" for s in samples)
        + "\n## Top parameter sets (IN-SAMPLE, on the search bars)\n\n"
        "| rank | parameters | Sharpe (in-sample) | return % (in-sample) |\n"
        f"| --- | --- | --- | --- |\n{top}\n"
    )
