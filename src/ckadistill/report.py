"""Report pieces for a distillation run: loss curves as a PNG and the settings / timings section of a
report (each task formats its own results table)."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)


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


def settings_section(settings: Mapping, seconds: Mapping[str, float]) -> list[str]:
    """Markdown lines of a report's "Settings and timings" section: the job's settings and its phase
    times in minutes, as one JSON block (so a run can be compared with another by eye or by script)."""
    minutes = {name: round(value / 60, 2) for name, value in seconds.items()}
    block = json.dumps({"settings": dict(settings), "minutes": minutes}, indent=2)
    return ["## Settings and timings", "", "```json", block, "```", ""]
