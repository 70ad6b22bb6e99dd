"""The offline default job end to end, on the real MiniLM and BBC News, shrunk to a few rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, pipeline

from ckadistill.commands.quickstart import main
from ckadistill.quickstart import QuickstartArguments, run_quickstart, train_teacher


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("quickstart")
    args = QuickstartArguments(
        output_dir=str(root / "out"),
        teacher_cache_dir=str(root / "cache"),
        max_train_samples=16,
        max_eval_samples=16,
        max_length=16,
        teacher_epochs=1,
        student_epochs=1,
    )
    return args, run_quickstart(args)


def test_report_and_clean_student(smoke):
    args, result = smoke
    rows = result["rows"]
    assert [row["parameters"] > 0 for row in rows] == [True, True]
    assert rows[0]["parameters"] / rows[1]["parameters"] > 5  # the default student is >= 5x smaller
    text = Path(result["report"]).read_text(encoding="utf-8")
    assert "| teacher (MiniLM-L6-H384) |" in text and "| student (ckadistill) |" in text
    report_dir = f"{args.output_dir}/report"
    for name in ("loss_curves.png", "cka_heatmap.png"):
        assert Path(report_dir, name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    student = result["student"]
    model, info = AutoModelForSequenceClassification.from_pretrained(student, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert sorted(model.config.id2label.values()) == [
        "business",
        "entertainment",
        "politics",
        "sports",
        "tech",
    ]
    assert "checkpoint" not in " ".join(p.name for p in Path(student).iterdir())
    classify = pipeline("text-classification", model=student, tokenizer=student)
    assert classify("Shares in the bank rose as profits beat forecasts")[0]["label"] in model.config.label2id


def test_teacher_is_cached_and_reused(smoke):
    args, result = smoke
    assert train_teacher(args, {}) == Path(result["teacher"])  # no data needed: cached


def test_bad_flag_is_reported(capsys):
    assert main(["--student_init", "magic"]) == 2
    assert "--student_init must be pca, slice or random" in capsys.readouterr().err
