"""Loss-curve plot of the report."""

from __future__ import annotations

import pytest

from ckadistill.report import plot_loss_curves


def test_loss_curves_png(tmp_path):
    history = [{"step": s, "loss": 2.0 / s, "loss/task": 1.0 / s, "loss/hidden": 0.5} for s in range(1, 6)]
    history.append({"step": 5, "eval_loss": 0.3})
    path = plot_loss_curves(history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no loss values"):
        plot_loss_curves([{"step": 1, "learning_rate": 0.1}], tmp_path / "empty.png")
