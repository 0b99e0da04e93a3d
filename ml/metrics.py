"""Classification metrics of direction predictions, the two naive baselines, and the paired
accuracy difference (with its standard error) the deploy rule decides on."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score


def classification_metrics(y_true: np.ndarray, p_up: np.ndarray) -> dict[str, float]:
    """Metrics of hard labels (``p_up >= 0.5`` means up) against 0/1 ``y_true``.

    Returns:
        accuracy, precision, recall, f1 (of the "up" class), n_samples, predicted_up_rate,
        actual_up_rate. Precision/recall/F1 are 0.0 when undefined.
    """
    y = np.asarray(y_true, dtype=np.int64)
    pred = (np.asarray(p_up, dtype=np.float64) >= 0.5).astype(np.int64)
    return {
        "accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan"),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "n_samples": int(len(y)),
        "predicted_up_rate": float(pred.mean()) if len(y) else float("nan"),
        "actual_up_rate": float(y.mean()) if len(y) else float("nan"),
    }


def baselines(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray
) -> dict[str, Any]:
    """Two naive baselines measured on the same validation split as the model.

    * ``majority_class``: always predict the most frequent training label.
    * ``logistic_regression``: scikit-learn logistic regression on the same (flattened)
      windows, fitted on the training split.

    Returns:
        ``{"majority_class": {...metrics}, "logistic_regression": {...metrics}}``.
    """
    probs = baseline_probabilities(x_train, y_train, x_val)
    majority = int(np.asarray(y_train, dtype=np.float64).mean() >= 0.5)
    return {
        "majority_class": {
            **classification_metrics(y_val, probs["majority_class"]),
            "predicts": "up" if majority else "down",
        },
        "logistic_regression": classification_metrics(y_val, probs["logistic_regression"]),
    }


def baseline_probabilities(
    x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray
) -> dict[str, np.ndarray]:
    """P(up) of the two naive baselines, fitted on the training split, for ``x_eval``.

    Returns:
        ``{"majority_class": p, "logistic_regression": p}``, each of length ``len(x_eval)``.
    """
    y_tr = np.asarray(y_train, dtype=np.int64)
    majority = int(y_tr.mean() >= 0.5) if len(y_tr) else 1
    out = {"majority_class": np.full(len(x_eval), float(majority))}
    if len(np.unique(y_tr)) < 2 or not len(x_eval):
        out["logistic_regression"] = out["majority_class"].copy()
        return out
    clf = LogisticRegression(max_iter=2000, C=1.0)
    clf.fit(x_train.reshape(len(x_train), -1), y_tr)
    out["logistic_regression"] = clf.predict_proba(x_eval.reshape(len(x_eval), -1))[:, 1]
    return out


def correct(y_true: np.ndarray, p_up: np.ndarray) -> np.ndarray:
    """Per-sample correctness (1.0/0.0) of the hard labels ``p_up >= 0.5``."""
    y = np.asarray(y_true, dtype=np.float64) >= 0.5
    return ((np.asarray(p_up, dtype=np.float64) >= 0.5) == y).astype(np.float64)


def paired_difference(correct_a: np.ndarray, correct_b: np.ndarray) -> tuple[float, float]:
    """Accuracy difference of A over B on the same samples, with its standard error.

    Paired: per-sample differences ``d_i = a_i - b_i``; SE = std(d, ddof=1) / sqrt(n).

    Returns:
        (mean difference, standard error); (nan, nan) without samples, SE 0 with one.
    """
    d = np.asarray(correct_a, dtype=np.float64) - np.asarray(correct_b, dtype=np.float64)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan")
    se = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return float(d.mean()), se


def selection_accuracy(metrics: dict[str, Any] | None) -> float:
    """The accuracy to rank deployed models by: ``holdout_accuracy`` (measured on bars that
    neither training nor epoch selection saw) when the model has one, else the older, optimistic
    ``val_accuracy``; 0.0 when neither is recorded."""
    m = metrics or {}
    value = m.get("holdout_accuracy")
    if value is None:
        value = m.get("val_accuracy")
    return float(value or 0.0)
