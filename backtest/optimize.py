"""Parameter optimisation: even grid, genetic search and walk-forward, ranked by Sharpe.

Evaluating parameter sets is delegated to an ``Evaluate`` callable (candles, list of
parameter dicts -> list of metrics) so the flow can fan batches out to Dask while tests
and benchmarks evaluate in-process with :func:`evaluate_params`.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from backtest.engine import check_candles, run_backtest
from backtest.metrics import compute_metrics, to_datetime
from backtest.strategies import Cache, Candles, Strategy, get_strategy
from core.exceptions import InvalidInputError
from core.schemas.backtest import (
    BacktestConfig,
    BacktestMetrics,
    GeneticReport,
    OptimizationEntry,
    WalkForwardReport,
    WalkForwardWindow,
)

log = logging.getLogger(__name__)

Params = dict[str, Any]
Evaluate = Callable[[Candles, list[Params]], list[BacktestMetrics]]


def evaluate_params(
    candles: Candles,
    strategy_name: str,
    param_sets: Sequence[Mapping[str, Any]],
    config: BacktestConfig | None = None,
) -> list[BacktestMetrics]:
    """Backtest every parameter set on ``candles`` (indicators computed once per period).

    Returns:
        one :class:`BacktestMetrics` per parameter set, in order.

    Raises:
        InvalidInputError: bad parameters; DataQualityError: bad candles.
    """
    strategy = get_strategy(strategy_name)
    check_candles(candles)
    cache: Cache = {}
    out = []
    for values in param_sets:
        params = strategy.params(values)
        entries, exits = strategy.signals(candles, params, cache)
        out.append(compute_metrics(run_backtest(candles, entries, exits, config, checked=True)))
    return out


def local_evaluator(strategy_name: str, config: BacktestConfig | None = None) -> Evaluate:
    """An :data:`Evaluate` running in this process."""

    def evaluate(candles: Candles, param_sets: list[Params]) -> list[BacktestMetrics]:
        return evaluate_params(candles, strategy_name, param_sets, config)

    return evaluate


# ---------------------------------------------------------------- search space
def resolve_space(
    strategy: Strategy, space: Mapping[str, Sequence[Any]] | None = None
) -> dict[str, tuple[Any, ...]]:
    """The search space: ``space`` when given, else the strategy's default.

    Raises:
        InvalidInputError: unknown parameter names or empty value lists.
    """
    resolved = {k: tuple(v) for k, v in (space or strategy.space).items()}
    fields = strategy.params_model.model_fields
    unknown = sorted(set(resolved) - set(fields))
    if unknown:
        raise InvalidInputError(
            f"space has unknown parameters {unknown} for strategy {strategy.name!r}; "
            f"allowed: {', '.join(fields)}"
        )
    if not resolved or any(len(v) == 0 for v in resolved.values()):
        raise InvalidInputError("space must give at least one value for each parameter it names")
    return resolved


def _is_valid(strategy: Strategy, values: Params) -> bool:
    try:
        strategy.params(values)
    except InvalidInputError:
        return False
    return True


def valid_combinations(strategy: Strategy, space: Mapping[str, tuple[Any, ...]]) -> list[Params]:
    """Every valid combination of ``space``, in order (last parameter varies fastest).

    Raises:
        InvalidInputError: no combination is valid.
    """
    names = list(space)
    combos = [dict(zip(names, vals, strict=True)) for vals in itertools.product(*space.values())]
    valid = [c for c in combos if _is_valid(strategy, c)]
    if not valid:
        raise InvalidInputError(
            f"no valid parameter combination in the space for {strategy.name!r}"
        )
    return valid


def rank(
    param_sets: Sequence[Params], metrics: Sequence[BacktestMetrics]
) -> list[OptimizationEntry]:
    """Entries sorted by Sharpe ratio descending (ties: higher total return first)."""
    entries = [
        OptimizationEntry(parameters=dict(p), **m.model_dump())
        for p, m in zip(param_sets, metrics, strict=True)
    ]
    return sorted(entries, key=lambda e: (-e.sharpe_ratio, -e.total_return_pct))


# ---------------------------------------------------------------- grid
def grid_search(
    candles: Candles,
    strategy_name: str,
    n_variations: int,
    evaluate: Evaluate,
    space: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[list[OptimizationEntry], int]:
    """Evaluate ``n_variations`` valid combinations drawn evenly from the space.

    Returns:
        ``(ranked entries, number of valid combinations in the space)``; all of them are
        evaluated when ``n_variations`` is at least that number.
    """
    strategy = get_strategy(strategy_name)
    combos = valid_combinations(strategy, resolve_space(strategy, space))
    if n_variations >= len(combos):
        chosen = combos
    else:
        idx = np.unique(np.linspace(0, len(combos) - 1, n_variations).round().astype(int))
        chosen = [combos[i] for i in idx]
    return rank(chosen, evaluate(candles, chosen)), len(combos)


# ---------------------------------------------------------------- genetic
def genetic_search(
    candles: Candles,
    strategy_name: str,
    evaluate: Evaluate,
    *,
    population: int = 16,
    generations: int = 10,
    seed: int = 42,
    max_evaluations_pct: float = 30.0,
    ga_share: float = 0.7,
    space: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[list[OptimizationEntry], GeneticReport]:
    """Genetic search over the grid's indices: elitism, tournament, crossover, step mutation.

    Each parameter set is evaluated at most once. The genetic phase runs ``generations``
    generations but stops at ``ga_share`` (70%) of the budget (``max_evaluations_pct`` of the
    valid space); the rest of the budget refines the best set by local search over its
    +-1-step neighbours. The same seed gives the same answer.

    Returns:
        ``(ranked entries of every evaluated set, report)``.
    """
    strategy = get_strategy(strategy_name)
    resolved = resolve_space(strategy, space)
    names = list(resolved)
    dims = [len(v) for v in resolved.values()]
    space_size = len(valid_combinations(strategy, resolved))
    budget = max(1, math.floor(space_size * max_evaluations_pct / 100.0))
    ga_budget = max(1, math.floor(budget * ga_share))
    rng = np.random.default_rng(seed)

    def decode(g: tuple[int, ...]) -> Params:
        return {n: resolved[n][i] for n, i in zip(names, g, strict=True)}

    validity: dict[tuple[int, ...], bool] = {}

    def valid(g: tuple[int, ...]) -> bool:
        if g not in validity:
            validity[g] = _is_valid(strategy, decode(g))
        return validity[g]

    fitness: dict[tuple[int, ...], float] = {}
    results: dict[tuple[int, ...], BacktestMetrics] = {}

    def random_genome() -> tuple[int, ...]:
        return tuple(int(rng.integers(0, d)) for d in dims)

    def mutate(g: tuple[int, ...]) -> tuple[int, ...]:
        out = list(g)
        for i, d in enumerate(dims):
            if rng.random() < max(0.3, 1.0 / len(dims)):
                if rng.random() < 0.15:
                    out[i] = int(rng.integers(0, d))
                else:
                    out[i] = int(np.clip(out[i] + rng.choice((-2, -1, 1, 2)), 0, d - 1))
        return tuple(out)

    def tournament(pop: list[tuple[int, ...]]) -> tuple[int, ...]:
        picks = rng.choice(len(pop), size=min(3, len(pop)), replace=False)
        return max((pop[i] for i in picks), key=lambda g: fitness.get(g, -math.inf))

    pop: list[tuple[int, ...]] = []
    tries = 0
    while len(pop) < population and tries < population * 50:
        tries += 1
        g = random_genome()
        if valid(g) and g not in pop:
            pop.append(g)

    generations_run = 0
    for _ in range(generations):
        todo = [g for g in dict.fromkeys(pop) if g not in fitness]
        todo = todo[: max(0, ga_budget - len(fitness))]
        if todo:
            for g, m in zip(todo, evaluate(candles, [decode(g) for g in todo]), strict=True):
                fitness[g] = m.sharpe_ratio
                results[g] = m
        generations_run += 1
        pop = [g for g in pop if g in fitness]
        if len(fitness) >= ga_budget or not pop:
            break
        pop.sort(key=lambda g: -fitness[g])
        children: list[tuple[int, ...]] = pop[:2]  # elites
        attempts = 0
        while len(children) < population and attempts < population * 30:
            attempts += 1
            a, b = tournament(pop), tournament(pop)
            mask = rng.random(len(dims)) < 0.5
            child = mutate(tuple(x if m else y for x, y, m in zip(a, b, mask, strict=True)))
            # prefer unexplored genomes; an explored one is accepted only after many tries
            if (
                valid(child)
                and child not in children
                and (child not in fitness or attempts > population * 20)
            ):
                children.append(child)
        pop = children

    # local refinement: spend what is left of the budget on the unexplored neighbours
    # (+-1 step in every dimension) of the best set with any left, re-ranking each round
    while len(fitness) < budget:
        neighbours: list[tuple[int, ...]] = []
        for best in sorted(fitness, key=lambda g: -fitness[g]):  # best first
            neighbours = [
                g
                for g in itertools.product(
                    *[range(max(0, i - 1), min(d, i + 2)) for i, d in zip(best, dims, strict=True)]
                )
                if g not in fitness and valid(g)
            ]
            if neighbours:
                break
        if not neighbours:
            break
        neighbours = neighbours[: budget - len(fitness)]
        for g, m in zip(
            neighbours, evaluate(candles, [decode(g) for g in neighbours]), strict=True
        ):
            fitness[g] = m.sharpe_ratio
            results[g] = m

    evaluated = list(results)
    entries = rank([decode(g) for g in evaluated], [results[g] for g in evaluated])
    report = GeneticReport(
        population=population,
        generations=generations_run,
        seed=seed,
        evaluations=len(evaluated),
        space_size=space_size,
        evaluated_pct=len(evaluated) / space_size * 100.0,
        best_sharpe=entries[0].sharpe_ratio if entries else 0.0,
    )
    return entries, report


# ---------------------------------------------------------------- walk-forward
def walk_forward(
    candles: Candles,
    strategy_name: str,
    evaluate: Evaluate,
    *,
    n_windows: int = 4,
    train_ratio: float = 3.0,
    n_variations: int = 50,
    config: BacktestConfig | None = None,
    space: Mapping[str, Sequence[Any]] | None = None,
) -> tuple[WalkForwardReport, list[OptimizationEntry]]:
    """Rolling walk-forward: grid-optimise on each train window, trade the choice on the next test.

    The ``n`` bars are cut into test windows of ``T = n // (train_ratio + n_windows)`` bars,
    each preceded by ``train_ratio x T`` train bars (windows roll by ``T``). Test signals
    are computed with the train bars before them as indicator warm-up (no look-ahead).

    Returns:
        ``(report, ranked entries of the last train window)``.

    Raises:
        InvalidInputError: windows too short (fewer than 100 train or 24 test bars).
    """
    strategy = get_strategy(strategy_name)
    n = len(candles)
    test_len = int(n // (train_ratio + n_windows))
    train_len = int(train_ratio * test_len)
    if test_len < 24 or train_len < 100:
        raise InvalidInputError(
            f"walk-forward windows too short: {n} bars give {train_len} train and {test_len} "
            "test bars per window; use fewer wf_windows, a smaller wf_train_ratio or a longer range"
        )
    windows: list[WalkForwardWindow] = []
    first_test = train_len
    stitched_entries = np.zeros(n - first_test, dtype=bool)
    stitched_exits = np.zeros(n - first_test, dtype=bool)
    last_entries: list[OptimizationEntry] = []
    for k in range(n_windows):
        a = k * test_len
        t0, t1 = a + train_len, min(a + train_len + test_len, n)
        if k == n_windows - 1:
            t1 = n  # the last window takes the remainder
        train = candles.slice(a, t0)
        entries, _ = grid_search(train, strategy_name, n_variations, evaluate, space)
        best = entries[0]
        params = strategy.params(best.parameters)
        span = candles.slice(a, t1)
        en, ex = strategy.signals(span, params)
        en, ex = en[train_len:], ex[train_len:]
        stitched_entries[t0 - first_test : t1 - first_test] = en
        stitched_exits[t0 - first_test : t1 - first_test] = ex
        test_run = run_backtest(candles.slice(t0, t1), en, ex, config, checked=True)
        windows.append(
            WalkForwardWindow(
                index=k,
                train_start=to_datetime(candles.time[a]),
                train_end=to_datetime(candles.time[t0 - 1]),
                test_start=to_datetime(candles.time[t0]),
                test_end=to_datetime(candles.time[t1 - 1]),
                best_parameters=best.parameters,
                train_sharpe=best.sharpe_ratio,
                test=compute_metrics(test_run),
            )
        )
        last_entries = entries
    overall = compute_metrics(
        run_backtest(
            candles.slice(first_test, n), stitched_entries, stitched_exits, config, checked=True
        )
    )
    report = WalkForwardReport(
        windows=windows,
        overall_out_of_sample=overall,
        parameter_stability=parameter_stability([w.best_parameters for w in windows]),
    )
    return report, last_entries


def parameter_stability(chosen: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """How stable each parameter's chosen value is across windows.

    Returns:
        per parameter: ``values`` (per window), ``distinct``, ``mode``, ``mode_share_pct``
        (windows choosing the most common value) and, for numbers, ``relative_std_pct``
        (std / |mean| x 100; 0 = always the same).
    """
    out: dict[str, dict[str, Any]] = {}
    for name in chosen[0] if chosen else {}:
        values = [c[name] for c in chosen]
        mode, count = Counter(values).most_common(1)[0]
        info: dict[str, Any] = {
            "values": values,
            "distinct": len(set(values)),
            "mode": mode,
            "mode_share_pct": count / len(values) * 100.0,
        }
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            arr = np.asarray(values, dtype=float)
            mean = abs(float(arr.mean()))
            info["relative_std_pct"] = float(arr.std() / mean * 100.0) if mean > 0 else 0.0
        out[name] = info
    return out
