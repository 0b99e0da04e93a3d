"""Calibrating a model's P(up) on its own recent record (pure numpy).

A network's sigmoid output is a score: a tiny GRU trained on data with a planted 61 % signal
said 0.574 on average where it was right 0.611 of the time, and one trained on a random walk
said 0.546 where it was right 0.487. predict-price therefore maps the model's P(up) through
a logistic (Platt) fit of what actually happened after the recent forecast origins:
``P(rise over H) = sigmoid(a + b * logit(p))``, fitted on the origins of the replay window
whose H-bar outcome is known, preferring those after the model's training window (hours the
model never saw) and falling back to all of them (labelled) when fewer than
``min_samples`` are after it. A model whose scores carry no information gets b ~ 0 and a
calibrated P(up) near the recent up share; too few origins: the score is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EPS = 1e-4


@dataclass(frozen=True)
class PlattMap:
    """``p -> sigmoid(a + b * logit(p))``, fitted on ``samples`` outcomes (``source`` says which)."""

    a: float = 0.0
    b: float = 1.0
    samples: int = 0
    source: str = "not calibrated"

    def __call__(self, p: np.ndarray | float) -> np.ndarray:
        """Returns the calibrated probabilities (NaN stays NaN)."""
        q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
        return 1.0 / (1.0 + np.exp(-(self.a + self.b * np.log(q / (1 - q)))))


def fit_platt(
    p: np.ndarray, rose: np.ndarray, *, ridge: float = 1.0, iterations: int = 50
) -> PlattMap:
    """Logistic regression of ``rose`` on ``logit(p)`` (Newton steps, a small ridge on the
    slope's distance from 1 and the intercept's from 0, so few samples stay near identity).

    Returns:
        the fitted :class:`PlattMap` (``samples`` = len(p)).
    """
    q = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    x = np.column_stack([np.ones(len(q)), np.log(q / (1 - q))])
    y = np.asarray(rose, dtype=np.float64)
    prior = np.array([0.0, 1.0])
    w = prior.copy()
    for _ in range(iterations):
        mu = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (mu - y) + ridge * (w - prior)
        hess = (x * (mu * (1 - mu))[:, None]).T @ x + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return PlattMap(a=float(w[0]), b=float(w[1]), samples=len(q))


def calibrate_on_history(
    close: np.ndarray,
    probs: np.ndarray,
    horizon_bars: int,
    unseen_from: int,
    *,
    min_samples: int = 200,
) -> PlattMap:
    """A :class:`PlattMap` from the bars whose model probability and H-bar outcome are known.

    Args:
        close: closes, oldest first (the last one is the forecast origin).
        probs: the model's P(up) aligned with ``close`` (NaN where not computed).
        horizon_bars: the model's horizon H (outcome: close[t + H] > close[t]).
        unseen_from: first index after the model's training window (len(close): none).

    Returns:
        the map fitted on the unseen origins when at least ``min_samples`` have an outcome,
        else on all of them (labelled), else the identity (``source`` says which).
    """
    n = len(close)
    t = np.arange(n - horizon_bars)
    t = t[np.isfinite(probs[t])]
    rose = close[t + horizon_bars] > close[t]
    unseen = t >= unseen_from
    if unseen.sum() >= min_samples:
        fit = fit_platt(probs[t[unseen]], rose[unseen])
        return PlattMap(fit.a, fit.b, fit.samples, "hours after the model's training window")
    if len(t) >= min_samples:
        fit = fit_platt(probs[t], rose)
        return PlattMap(
            fit.a, fit.b, fit.samples, "recent hours, including hours the model trained on"
        )
    return PlattMap(samples=int(len(t)), source=f"not calibrated: {len(t)} known outcomes")
