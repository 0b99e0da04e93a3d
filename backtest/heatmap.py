"""The optimisation heatmap: Sharpe over two parameters, in-sample and out-of-sample side by side.

Pure (numpy, matplotlib on Agg; no Prefect). What each panel shows:

* **axes**: the two parameters with the most distinct evaluated values (ties: the strategy's
  parameter order); the busier one across. Any further parameter (RSI has three) is not
  drawn: each cell holds the set with the best **in-sample** Sharpe among the evaluated sets
  sharing that cell's two values, and that set is named in the cell's place in the data
  (:attr:`SharpeHeatmap.cell_parameters`).
* **IN-SAMPLE**: that set's Sharpe on the bars the search ranked it on (grid and genetic: the
  search bars; walk-forward: the last train window, whose ranking ``all_results`` holds).
* **OUT-OF-SAMPLE**: the same set traded on bars the search never saw (grid and genetic: the
  held-out bars, only when ``holdout_pct`` > 0; walk-forward: the last test window), its
  indicators warmed up on the bars before (:func:`out_of_sample_sharpes`).
* Cells never evaluated (a genetic search visits part of the space, a grid draws evenly from
  it) are left blank. The chosen best set is boxed in both panels. Both panels share one
  colour scale, centred on a Sharpe of 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from backtest.charts import new_figure, to_png
from backtest.engine import run_backtest
from backtest.metrics import compute_metrics
from backtest.strategies import Cache, Candles, get_strategy
from core.exceptions import InvalidInputError
from core.schemas.backtest import BacktestConfig, OptimizationEntry, OptimizationResult

#: Columns and cells per panel up to which each cell's Sharpe is written in it.
ANNOTATE_MAX_COLUMNS = 14
ANNOTATE_MAX_CELLS = 160


@dataclass(frozen=True)
class SharpeHeatmap:
    """The numbers of the heatmap (rows: ``y_values``, columns: ``x_values``; NaN: not evaluated).

    Attributes:
        cell_parameters: per cell, the set drawn there (best in-sample Sharpe), or None.
        out_of_sample: None when no bars were held out (``out_of_sample_label`` says why).
        best: (row, column) of the optimisation's chosen set.
    """

    x_name: str
    y_name: str | None
    x_values: list[Any]
    y_values: list[Any]
    in_sample: np.ndarray
    out_of_sample: np.ndarray | None
    cell_parameters: list[list[dict[str, Any] | None]]
    in_sample_label: str
    out_of_sample_label: str
    best: tuple[int, int]
    other_parameters: list[str]

    @property
    def axes_text(self) -> str:
        """The parameters drawn, in words ("rsi_period and oversold")."""
        return f"{self.x_name} and {self.y_name}" if self.y_name else self.x_name


def _ordered(values: set[Any]) -> list[Any]:
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def heatmap_axes(entries: Sequence[OptimizationEntry]) -> tuple[str, str | None]:
    """The heatmap's (across, down) parameters: the two with the most distinct evaluated
    values, ties in parameter order; down is None for a one-parameter space.

    Raises:
        InvalidInputError: no entries.
    """
    if not entries:
        raise InvalidInputError("entries must hold at least one evaluated parameter set")
    names = list(entries[0].parameters)
    distinct = {n: len({e.parameters.get(n) for e in entries}) for n in names}
    ranked = sorted(names, key=lambda n: (-distinct[n], names.index(n)))
    return ranked[0], (ranked[1] if len(ranked) > 1 else None)


def sharpe_grid(
    entries: Sequence[OptimizationEntry], x_name: str, y_name: str | None
) -> tuple[list[Any], list[Any], np.ndarray, list[list[dict[str, Any] | None]]]:
    """In-sample Sharpe per (``y_name``, ``x_name``) cell: the best over the other parameters.

    Returns:
        ``(x_values, y_values, sharpe, parameters)``: sorted distinct values (``[None]`` down
        without ``y_name``), a ``(len(y), len(x))`` array (NaN: no set evaluated there) and
        the set drawn in each cell.
    """
    xs = _ordered({e.parameters[x_name] for e in entries})
    ys = _ordered({e.parameters[y_name] for e in entries}) if y_name else [None]
    col = {v: i for i, v in enumerate(xs)}
    row = {v: i for i, v in enumerate(ys)}
    sharpe = np.full((len(ys), len(xs)), np.nan)
    params: list[list[dict[str, Any] | None]] = [[None] * len(xs) for _ in ys]
    for e in entries:
        r = row[e.parameters[y_name]] if y_name else 0
        c = col[e.parameters[x_name]]
        if np.isnan(sharpe[r, c]) or e.sharpe_ratio > sharpe[r, c]:
            sharpe[r, c] = e.sharpe_ratio
            params[r][c] = dict(e.parameters)
    return xs, ys, sharpe, params


def out_of_sample_sharpes(
    candles: Candles,
    strategy_name: str,
    param_sets: Sequence[dict[str, Any]],
    start: int,
    end: int,
    config: BacktestConfig | None = None,
) -> list[float]:
    """Sharpe of each set traded on bars ``[start, end)`` of ``candles``, indicators warmed
    up on the bars before ``start`` (signals use data up to each bar: no look-ahead), each
    indicator computed once for all sets.

    Returns:
        one Sharpe per set, in order.

    Raises:
        InvalidInputError: an empty or out-of-range ``[start, end)``, or bad parameters.
    """
    if not 0 <= start < end <= len(candles):
        raise InvalidInputError(
            f"out-of-sample bars [{start}, {end}) must lie inside the {len(candles)} candles"
        )
    strategy = get_strategy(strategy_name)
    warm = candles.slice(0, end)
    traded = candles.slice(start, end)
    cache: Cache = {}
    out = []
    for values in param_sets:
        entries, exits = strategy.signals(warm, strategy.params(values), cache)
        run = run_backtest(traded, entries[start:], exits[start:], config, checked=True)
        out.append(compute_metrics(run).sharpe_ratio)
    return out


def _index_of(candles: Candles, when: Any) -> int:
    t = np.datetime64(when.replace(tzinfo=None), "ns")
    return int(np.searchsorted(candles.time, t))


def sample_ranges(
    result: OptimizationResult, candles: Candles, split: int
) -> tuple[str, tuple[int, int] | None, str]:
    """Where the heatmap's two samples lie in ``candles`` (all bars of the optimisation).

    Args:
        split: first held-out bar (``len(candles)`` when none; ignored for walk-forward).

    Returns:
        ``(in-sample label, (start, end) of the out-of-sample bars or None, its label)``.
    """
    n = len(candles)
    if result.walk_forward is not None and result.walk_forward.windows:
        w = result.walk_forward.windows[-1]
        start = _index_of(candles, w.test_start)
        end = min(n, _index_of(candles, w.test_end) + 1)
        return (
            f"IN-SAMPLE: last train window, {w.train_start:%Y-%m-%d} to {w.train_end:%Y-%m-%d}",
            (start, end),
            f"OUT-OF-SAMPLE: last test window, {w.test_start:%Y-%m-%d} to {w.test_end:%Y-%m-%d}",
        )
    s = result.in_sample
    in_label = f"IN-SAMPLE: search bars, {s.start:%Y-%m-%d} to {s.end:%Y-%m-%d}"
    if split >= n:
        return in_label, None, "OUT-OF-SAMPLE: none, no bars were held out (set holdout_pct)"
    o = result.out_of_sample
    span = f", {o.start:%Y-%m-%d} to {o.end:%Y-%m-%d}" if o is not None else ""
    return in_label, (split, n), f"OUT-OF-SAMPLE: held-out bars{span}"


def optimization_heatmap(result: OptimizationResult, candles: Candles, split: int) -> SharpeHeatmap:
    """The heatmap numbers of ``result`` (see the module docstring).

    Args:
        candles: every bar of the optimisation's range; ``split``: its first held-out bar
            (``len(candles)`` when none).

    Returns:
        a :class:`SharpeHeatmap`.

    Raises:
        InvalidInputError: the result has no evaluated sets.
    """
    entries = result.all_results
    x_name, y_name = heatmap_axes(entries)
    xs, ys, sharpe, params = sharpe_grid(entries, x_name, y_name)
    in_label, oos, oos_label = sample_ranges(result, candles, split)
    oos_grid = None
    if oos is not None:
        cells = [(r, c) for r in range(len(ys)) for c in range(len(xs)) if params[r][c]]
        values = out_of_sample_sharpes(
            candles,
            result.strategy_name,
            [params[r][c] for r, c in cells],  # type: ignore[misc]
            *oos,
            result.best_result.config,
        )
        oos_grid = np.full_like(sharpe, np.nan)
        for (r, c), v in zip(cells, values, strict=True):
            oos_grid[r, c] = v
    best = entries[0].parameters
    return SharpeHeatmap(
        x_name=x_name,
        y_name=y_name,
        x_values=xs,
        y_values=ys,
        in_sample=sharpe,
        out_of_sample=oos_grid,
        cell_parameters=params,
        in_sample_label=in_label,
        out_of_sample_label=oos_label,
        best=(ys.index(best[y_name]) if y_name else 0, xs.index(best[x_name])),
        other_parameters=[n for n in best if n not in (x_name, y_name)],
    )


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def heatmap_figure(hm: SharpeHeatmap, title: str) -> Any:
    """The two panels of ``hm`` side by side (one colour scale centred on 0).

    Returns:
        a matplotlib Figure (render it with :func:`backtest.charts.to_png`).
    """
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    ny, nx = hm.in_sample.shape
    panels = [(hm.in_sample_label, hm.in_sample), (hm.out_of_sample_label, hm.out_of_sample)]
    finite = np.concatenate([g[np.isfinite(g)] for _, g in panels if g is not None])
    bound = float(np.abs(finite).max()) if finite.size else 1.0
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-max(bound, 1e-6), vmax=max(bound, 1e-6))
    # 1,000 pixels wide: a run page shows it at about 850 without shrinking the text much
    fig = new_figure(10.0, min(9.0, max(3.6, 1.8 + 0.4 * ny)))
    axes = fig.subplots(1, 2, sharey=True)
    annotate = nx <= ANNOTATE_MAX_COLUMNS and nx * ny <= ANNOTATE_MAX_CELLS
    image = None
    for ax, (label, grid) in zip(axes, panels, strict=True):
        ax.set_title(label, fontsize=9)
        ax.set_xticks(range(nx), [_fmt(v) for v in hm.x_values], fontsize=8)
        ax.tick_params(axis="x", labelrotation=90 if nx > 16 else 0)
        ax.set_yticks(range(ny), [_fmt(v) for v in hm.y_values] if hm.y_name else [""])
        ax.set_xlabel(hm.x_name)
        ax.set_facecolor("0.93")  # not evaluated
        if grid is None:
            ax.set_xlim(-0.5, nx - 0.5)
            ax.set_ylim(ny - 0.5, -0.5)
            ax.text(0.5, 0.5, "no bars held out", transform=ax.transAxes, ha="center", va="center")
            continue
        image = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto", interpolation="nearest")
        if annotate:
            for r, c in zip(*np.nonzero(np.isfinite(grid)), strict=True):
                ax.text(c, r, f"{grid[r, c]:.1f}", ha="center", va="center", fontsize=7)
        r, c = hm.best
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, lw=2, ec="black"))
    axes[0].set_ylabel(hm.y_name or "")
    others = ", ".join(hm.other_parameters)
    fig.suptitle(
        title
        + (f"\neach cell: the best in-sample set over {others}" if others else "")
        + "; boxed: the chosen set; blank: not evaluated",
        fontsize=9,
    )
    fig.subplots_adjust(left=0.08, right=0.91, top=0.82, bottom=0.14, wspace=0.05)
    if image is not None:
        cax = fig.add_axes((0.925, 0.14, 0.015, 0.68))
        fig.colorbar(image, cax=cax)
        cax.set_title("Sharpe", fontsize=8)
    return fig


def render_heatmap(hm: SharpeHeatmap, title: str) -> bytes:
    """:func:`heatmap_figure` as PNG bytes."""
    return to_png(heatmap_figure(hm, title))
