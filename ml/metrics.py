"""Classification metrics of direction predictions, and the two naive baselines."""

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
    y_tr = np.asarray(y_train, dtype=np.int64)
    majority = int(y_tr.mean() >= 0.5)
    out: dict[str, Any] = {
        "majority_class": {
            **classification_metrics(y_val, np.full(len(y_val), float(majority))),
            "predicts": "up" if majority else "down",
        }
    }
    flat_tr = x_train.reshape(len(x_train), -1)
    flat_val = x_val.reshape(len(x_val), -1)
    if len(np.unique(y_tr)) < 2:
        p = np.full(len(y_val), float(majority))
    else:
        clf = LogisticRegression(max_iter=2000, C=1.0)
        clf.fit(flat_tr, y_tr)
        p = clf.predict_proba(flat_val)[:, 1]
    out["logistic_regression"] = classification_metrics(y_val, p)
    return out
