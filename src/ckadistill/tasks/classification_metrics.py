"""Classification metrics (GLUE-style) and the side-by-side results table of `evaluate`.

Classification: accuracy, macro-F1, Matthews correlation (scikit-learn). Regression: Pearson and
Spearman correlations (scipy) and the mean squared error. Rows labelled -100 (unlabelled) are
skipped everywhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import EvalPrediction

from ckadistill.tasks.classification_data import UNLABELLED


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and Matthews correlation of argmax predictions.

    Args:
        logits: `(N, C)` class scores.
        labels: `(N,)` class ids; rows with -100 are ignored.
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    keep = labels != UNLABELLED
    predictions = logits.argmax(axis=-1)[keep]  # (n,)
    labels = labels[keep]
    if len(labels) == 0:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns on classes that are never predicted
        return {
            "accuracy": float(accuracy_score(labels, predictions)),
            "macro_f1": float(f1_score(labels, predictions, average="macro")),
            "matthews": float(matthews_corrcoef(labels, predictions)),
        }


def regression_metrics(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Pearson and Spearman correlations and the MSE.

    Args:
        predictions: `(N,)` or `(N, 1)` predicted values.
        labels: `(N,)` targets; rows with -100 are ignored.

    A constant prediction has no correlation: Pearson and Spearman are NaN then.
    """
    from scipy.stats import pearsonr, spearmanr

    predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=np.float64).reshape(-1)
    keep = labels != UNLABELLED
    predictions, labels = predictions[keep], labels[keep]
    if len(labels) < 2:
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns NaN
        return {
            "pearson": float(pearsonr(predictions, labels)[0]),
            "spearman": float(spearmanr(predictions, labels)[0]),
            "mse": float(np.mean((predictions - labels) ** 2)),
        }


def build_compute_metrics(task: str) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `compute_metrics` function for `transformers.Trainer` ('classification' or 'regression')."""
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        if task == "regression":
            return regression_metrics(logits, prediction.label_ids)
        return classification_metrics(logits, prediction.label_ids)

    return compute_metrics


def task_metrics(task: str, logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`classification_metrics` or `regression_metrics`, by task name."""
    if task == "regression":
        return regression_metrics(logits, labels)
    return classification_metrics(logits, labels)


# (row key, header, format) of the side-by-side table; only columns some row fills are shown.
TABLE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "model", "{}"),
    ("parameters", "parameters", "{:,}"),
    ("compression", "compression", "{:.2f}×"),
    ("accuracy", "accuracy", "{:.4f}"),
    ("relative_accuracy", "accuracy vs first", "{:.1%}"),
    ("macro_f1", "macro-F1", "{:.4f}"),
    ("matthews", "Matthews", "{:.4f}"),
    ("pearson", "Pearson", "{:.4f}"),
    ("spearman", "Spearman", "{:.4f}"),
    ("mse", "MSE", "{:.4f}"),
    ("examples_per_second_bs1", "ex/s (batch 1)", "{:.1f}"),
    ("examples_per_second_bs32", "ex/s (batch 32)", "{:.1f}"),
    ("speedup_bs32", "speed-up (batch 32)", "{:.2f}×"),
)


def results_table(rows: Sequence[dict]) -> str:
    """A Markdown table of `evaluate_models` rows; compression and speed-up are relative to the first row."""
    if not rows:
        raise ValueError("results_table needs at least one row")
    ref = rows[0]
    rows = [
        {
            **row,
            "compression": ref["parameters"] / row["parameters"],
            "speedup_bs32": row["examples_per_second_bs32"] / ref["examples_per_second_bs32"],
            "relative_accuracy": row["accuracy"] / ref["accuracy"] if ref.get("accuracy") else None,
        }
        for row in rows
    ]
    columns = [c for c in TABLE_COLUMNS if any(row.get(c[0]) is not None for row in rows)]
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if key == "name" else "---:" for key, _, _ in columns) + "|")
    for row in rows:
        lines.append(
            "| "
            + " | ".join(fmt.format(row[k]) if row.get(k) is not None else "-" for k, _, fmt in columns)
            + " |"
        )
    lines.append("")
    lines.append(
        f"Metrics on {ref['examples']:,} examples; speed on the same first {ref['speed_examples']} examples "
        f"(warm-up excluded) on {ref['device']} with {ref['torch_threads']} torch threads; "
        f"compression and speed-up relative to {ref['name']}."
    )
    return "\n".join(lines)
