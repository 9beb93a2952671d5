"""GLUE and own-data metrics with scikit-learn and scipy: accuracy, Matthews correlation, F1 (binary, or macro
over more labels), Pearson and Spearman."""

from __future__ import annotations

import math

import numpy as np

from .glue import GlueTask

PAIR_F1_TASKS = ("mrpc", "qqp")


def _finite(value: float) -> float:
    """A correlation of a constant prediction is undefined (NaN); report it as 0 (no correlation)."""
    value = float(value)
    return value if math.isfinite(value) else 0.0


def compute_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every metric of `task` from predicted ids (or scores, STS-B) and gold labels."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if task.is_regression:
        from scipy.stats import pearsonr, spearmanr

        if len(labels) < 2 or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return {"pearson": 0.0, "spearman": 0.0}
        return {"pearson": _finite(pearsonr(predictions, labels)[0]),
                "spearman": _finite(spearmanr(predictions, labels)[0])}
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    out = {"accuracy": float(accuracy_score(labels, predictions))}
    extra = getattr(task, "extra_metrics", ())  # own data (runner/owndata.py): its metric, F1 when binary
    if task.metric == "matthews" or "matthews" in extra:
        out["matthews"] = float(matthews_corrcoef(labels, predictions))
    if task.name in PAIR_F1_TASKS or "f1" in extra:
        average = "binary" if task.num_labels == 2 else "macro"
        out["f1"] = float(f1_score(labels, predictions, average=average, zero_division=0.0))
    return out
