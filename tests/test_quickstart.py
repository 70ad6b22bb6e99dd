"""The offline default job end to end, on the real MiniLM and BBC News, shrunk to a few rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForSequenceClassification, pipeline

from ckadistill.commands.quickstart import main
from ckadistill.quickstart import QuickstartArguments, link_teacher, run_quickstart, train_teacher


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


def test_stable_teacher_path_beside_the_student(smoke, tmp_path, monkeypatch):
    args, result = smoke
    link = Path(args.output_dir) / "teacher"
    assert result["teacher_link"] == str(link)
    assert link.resolve() == Path(result["teacher"]).resolve()
    assert AutoModelForSequenceClassification.from_pretrained(link).config.num_labels == 5
    # A rerun replaces the link; where links are refused the teacher is copied.
    other = tmp_path / "other-teacher"
    other.mkdir()
    (other / "config.json").write_text("{}", encoding="utf-8")
    relinked = link_teacher(other, tmp_path / "out")
    assert relinked.is_symlink() and (relinked / "config.json").read_text(encoding="utf-8") == "{}"
    assert link_teacher(Path(result["teacher"]), tmp_path / "out").resolve() == link.resolve()
    assert (other / "config.json").exists()  # replacing the link leaves its old target alone

    def refuse(*args, **kwargs):
        raise OSError("links not allowed")

    monkeypatch.setattr(Path, "symlink_to", refuse)
    copied = link_teacher(other, tmp_path / "out")
    assert not copied.is_symlink() and (copied / "config.json").read_text(encoding="utf-8") == "{}"


def test_bad_flag_is_reported(capsys):
    assert main(["--student_init", "magic"]) == 2
    assert "--student_init must be pca, slice or random" in capsys.readouterr().err


def test_student_train_windows_reach_the_students_data_only(tmp_path, monkeypatch):
    import ckadistill.tasks.classification as classification
    from ckadistill.quickstart import _data_args, distil_student

    seen = []
    monkeypatch.setattr(classification, "run_distill", lambda model, data, *rest: seen.append(data) or {})
    splits = {name: tmp_path / f"{name}.csv" for name in ("train", "validation", "test")}
    args = QuickstartArguments(student_train_windows=3, output_dir=str(tmp_path / "out"))
    distil_student(args, splits, tmp_path / "teacher", tmp_path / "student")
    assert [data.train_windows for data in seen] == [3]
    assert _data_args(splits, args).train_windows == 1  # the teacher is fine-tuned on first windows
    assert main(["--student_train_windows", "0"]) == 2


def test_phase_times_are_returned(smoke):
    _, result = smoke
    assert {"data", "teacher", "student", "evaluate", "report", "total"} <= set(result["seconds"])


def test_fast_applies_its_budget_to_unset_settings_only():
    fast = QuickstartArguments(fast=True, student_epochs=5.0)
    assert fast.output_dir == "outputs/quickstart-fast"  # never overwrites the full run's outputs
    assert (fast.max_train_samples, fast.max_eval_samples, fast.max_length) == (600, 200, 96)
    assert fast.teacher_epochs == 2.0
    assert fast.student_epochs == 5.0  # given, so kept
    assert fast.teacher_key() != QuickstartArguments().teacher_key()  # a teacher of its own in the cache
    assert QuickstartArguments(fast=True, output_dir="elsewhere").output_dir == "elsewhere"


def test_fast_run_says_its_numbers_are_not_published(tmp_path, capsys, monkeypatch):
    import ckadistill.quickstart as quickstart

    monkeypatch.setattr(
        quickstart,
        "FAST_BUDGET",
        {
            **quickstart.FAST_BUDGET,
            "max_train_samples": 16,
            "max_eval_samples": 16,
            "max_length": 16,
            "student_epochs": 1.0,
        },
    )
    args = QuickstartArguments(
        fast=True, output_dir=str(tmp_path / "out"), teacher_cache_dir=str(tmp_path / "c")
    )
    result = run_quickstart(args)
    assert "not the published ones" in capsys.readouterr().out
    assert "Smoke run (`--fast`)" in Path(result["report"]).read_text(encoding="utf-8")


def test_teacher_fine_tune_settings_are_recorded(smoke):
    args, result = smoke
    import yaml

    config = yaml.safe_load((Path(result["teacher"]) / "ckadistill_config.yaml").read_text(encoding="utf-8"))
    assert config["freeze_layers"] == args.teacher_freeze_layers == 4
    assert config["test_file"] is None  # the test split is scored once, in the evaluate phase


def test_the_hub_minilm_id_resolves_to_the_packaged_copy(tmp_path, monkeypatch):
    from ckadistill.packaged import MINILM_HUB_ID, minilm_path, packaged_model_path

    assert packaged_model_path(MINILM_HUB_ID) == minilm_path()
    assert (
        AutoModelForSequenceClassification.from_pretrained(
            packaged_model_path(MINILM_HUB_ID)
        ).config.hidden_size
        == 384
    )
    assert packaged_model_path("some/other-model") == "some/other-model"
    local = tmp_path / "sentence-transformers" / "all-MiniLM-L6-v2"  # a local folder of that name wins
    local.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert packaged_model_path(MINILM_HUB_ID) == MINILM_HUB_ID
