"""Results table and loss-curve plot of the report."""

from __future__ import annotations

import pytest

from ckadistill.report import compare_to_reference, markdown_table, plot_loss_curves


def test_compare_and_table():
    rows = [
        {"name": "teacher", "parameters": 1000, "accuracy": 0.98, "examples_per_second_bs32": 10.0},
        {"name": "student", "parameters": 200, "accuracy": 0.97, "examples_per_second_bs32": 55.0},
    ]
    rows = compare_to_reference(rows)
    assert rows[1]["compression"] == pytest.approx(5.0)
    assert rows[1]["relative_accuracy"] == pytest.approx(0.97 / 0.98)
    assert rows[1]["speedup_bs32"] == pytest.approx(5.5)
    table = markdown_table(rows).splitlines()
    assert table[0].startswith("| model | parameters | compression | accuracy |")
    assert "macro-F1" not in table[0]  # no row has it
    assert table[3].startswith("| student | 200 | 5.0× | 97.00% |")
    assert len(table) == 4


def test_loss_curves_png(tmp_path):
    history = [{"step": s, "loss": 2.0 / s, "loss/task": 1.0 / s, "loss/hidden": 0.5} for s in range(1, 6)]
    history.append({"step": 5, "eval_loss": 0.3})
    path = plot_loss_curves(history, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no loss values"):
        plot_loss_curves([{"step": 1, "learning_rate": 0.1}], tmp_path / "empty.png")
