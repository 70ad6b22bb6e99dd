"""Report pieces for a distillation run: a results table in Markdown and loss curves as a PNG."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

# Columns of the results table: (row key, header, format). Missing values print as "-".
RESULT_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("name", "model", "{}"),
    ("parameters", "parameters", "{:,}"),
    ("compression", "compression", "{:.1f}×"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("macro_f1", "macro-F1", "{:.4f}"),
    ("relative_accuracy", "acc. vs teacher", "{:.1%}"),
    ("examples_per_second_bs1", "ex/s (batch 1)", "{:.1f}"),
    ("examples_per_second_bs32", "ex/s (batch 32)", "{:.1f}"),
    ("speedup_bs32", "speed-up (batch 32)", "{:.2f}×"),
)


def compare_to_reference(rows: Sequence[dict], reference: int = 0) -> list[dict]:
    """Add compression, accuracy and speed-up relative to `rows[reference]` (the teacher) to each row."""
    ref = rows[reference]
    out = []
    for row in rows:
        row = dict(row)
        if ref.get("parameters") and row.get("parameters"):
            row["compression"] = ref["parameters"] / row["parameters"]
        if ref.get("accuracy") and row.get("accuracy") is not None:
            row["relative_accuracy"] = row["accuracy"] / ref["accuracy"]
        if ref.get("examples_per_second_bs32") and row.get("examples_per_second_bs32"):
            row["speedup_bs32"] = row["examples_per_second_bs32"] / ref["examples_per_second_bs32"]
        out.append(row)
    return out


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]] = RESULT_COLUMNS) -> str:
    """A Markdown table with one row per model; only columns that some row fills are shown."""
    columns = [c for c in columns if any(row.get(c[0]) is not None for row in rows)]
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if key == "name" else "---:" for key, _, _ in columns) + "|")
    for row in rows:
        cells = [fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_loss_curves(
    log_history: Sequence[dict], path: str | Path, *, title: str = "Distillation losses"
) -> Path:
    """Plot every logged training-loss component against the step, one line each, as a PNG.

    `log_history` is `Trainer.state.log_history`: dicts with a `step` and the logged values. The total
    loss is `loss`; components are the keys starting with `loss/` (task, kd, hidden); evaluation loss
    `eval_loss` is drawn dashed when present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if key == "loss" or key.startswith("loss/") or key == "eval_loss":
                steps, values = series.setdefault(key, ([], []))
                steps.append(entry["step"])
                values.append(float(value))
    if not series:
        raise ValueError("The log history holds no loss values: was logging_steps larger than the run?")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, (steps, values) in sorted(series.items()):
        ax.plot(
            steps,
            values,
            "--" if key == "eval_loss" else "-",
            marker="." if len(steps) < 30 else None,
            label=key,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    logger.info("Loss curves written to %s", path)
    return path
