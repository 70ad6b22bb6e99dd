"""Few-step CPU runs of `ckadistill distill` through the real CLI entry point, with tiny BERT models.

The helpers at the top (tiny teacher, data files, a trainer that remembers itself) are shared by
the other classification test files.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from safetensors import safe_open
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    pipeline,
)

import ckadistill.trainer as trainer_module
from ckadistill.commands.distill import main
from ckadistill.trainer import PROJECTIONS_FILE, DistillationTrainer
from conftest import SENTENCES, build_tokenizer

TOPICS = [
    "business",
    "sport",
    "tech",
    "entertainment",
    "politics",
    "business",
    "sport",
    "entertainment",
    "tech",
    "politics",
]


# ---------------------------------------------------------------------------------------------------
# Shared helpers.
# ---------------------------------------------------------------------------------------------------


def tiny_bert(
    tokenizer, *, labels: list[str] | None, hidden: int = 32, layers: int = 4, seed: int = 0, vocab=None
):
    """A random BERT classifier (regression head when `labels` is None)."""
    head = (
        {"num_labels": 1, "problem_type": "regression"}
        if labels is None
        else {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {n: i for i, n in enumerate(labels)},
        }
    )
    config = BertConfig(
        vocab_size=vocab or len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
        **head,
    )
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def save_model(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def topic_rows(repeat: int = 4) -> list[list[str]]:
    return [[s, t] for _ in range(repeat) for s, t in zip(SENTENCES, TOPICS, strict=True)]


class RecordingTrainer(DistillationTrainer):
    """The real trainer, remembering its instances so tests can inspect the teacher and projections."""

    instances: ClassVar[list[DistillationTrainer]] = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingTrainer.instances.append(self)
        self.projections_after_load = None

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.projections is not None:
            self.projections_after_load = {k: v.clone() for k, v in self.projections.state_dict().items()}


@pytest.fixture
def recording(monkeypatch):
    RecordingTrainer.instances = []
    monkeypatch.setattr(trainer_module, "DistillationTrainer", RecordingTrainer)
    return RecordingTrainer.instances


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tok):
    return save_model(tiny_bert(tok, labels=sorted(set(TOPICS))), tok, tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    return write_csv(tmp_path_factory.mktemp("data") / "train.csv", ["text", "label"], topic_rows())


FAST = [
    "--max_steps", "3", "--per_device_train_batch_size", "8", "--logging_steps", "1",
    "--save_strategy", "steps", "--save_steps", "3", "--eval_strategy", "no", "--disable_tqdm", "true",
    "--max_length", "24",
]  # fmt: skip


def distill_argv(teacher: Path, train: Path, out: Path, *extra: str) -> list[str]:
    return ["--teacher", str(teacher), "--train_file", str(train), "--output_dir", str(out), *FAST, *extra]


def log_history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def assert_loads_cleanly(out: Path) -> None:
    """The student loads with no missing or unexpected keys, and its weights file holds only its own."""
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    assert saved == set(model.state_dict())
    assert not any("projection" in key or key.startswith("linear") for key in saved)


# ---------------------------------------------------------------------------------------------------
# The runs.
# ---------------------------------------------------------------------------------------------------

SHAPES = {
    "cka": [
        "--student_layers",
        "2",
        "--student_hidden_size",
        "16",
        "--student_heads",
        "2",
        "--student_ffn_size",
        "32",
    ],
    "cosine": ["--student_layers", "2"],  # equal widths
    "mse_proj": ["--student_layers", "2", "--student_hidden_size", "16", "--student_heads", "2"],
    "none": ["--student_layers", "2", "--student_hidden_size", "16", "--student_heads", "2"],
}


@pytest.mark.parametrize("hidden_loss", ["cka", "cosine", "mse_proj", "none"])
def test_distill_each_hidden_loss(hidden_loss, teacher_dir, train_csv, tmp_path, recording):
    out = tmp_path / "student"
    teacher_before = {
        k: v.clone()
        for k, v in AutoModelForSequenceClassification.from_pretrained(teacher_dir).state_dict().items()
    }
    report = ["--report_to", "tensorboard"] if hidden_loss == "cka" else []
    rc = main(
        distill_argv(teacher_dir, train_csv, out, "--hidden_loss", hidden_loss, *SHAPES[hidden_loss], *report)
    )
    assert rc == 0

    # Losses are finite and every component is logged, per-pair CKA included.
    train_logs = [entry for entry in log_history(out) if "loss" in entry]
    assert len(train_logs) == 3
    for entry in train_logs:
        assert math.isfinite(entry["loss"])
        assert math.isfinite(entry["loss/task"]) and math.isfinite(entry["loss/kd"])
        assert ("loss/hidden" in entry) == (hidden_loss != "none")
        assert {"cka/enc_0_0", "cka/enc_1_2", "cka/enc_2_4"} <= set(entry)
        assert all(0.0 <= entry[k] <= 1.0 for k in entry if k.startswith("cka/"))

    # A checkpoint was written; projections only there, never in the student.
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()
    assert (out / "checkpoint-3" / PROJECTIONS_FILE).is_file() == (hidden_loss == "mse_proj")
    assert not (out / PROJECTIONS_FILE).exists()

    # The teacher stayed frozen, in eval mode, unchanged.
    (trainer,) = recording
    assert not trainer.teacher.training
    for name, param in trainer.teacher.named_parameters():
        assert not param.requires_grad and param.grad is None
        torch.testing.assert_close(param.detach().cpu(), teacher_before[name], rtol=0, atol=0)

    # The saved student is a plain Hugging Face model with its card, config and layer map.
    assert_loads_cleanly(out)
    card = (out / "README.md").read_text()
    assert "Compression" in card and hidden_loss in card and "0:0,1:2,2:4" in card
    assert (out / "ckadistill_config.yaml").is_file()
    assert json.loads((out / "layer_map.json").read_text())["encoder"] == "0:0,1:2,2:4"
    if hidden_loss == "cka":
        (prediction,) = pipeline("text-classification", model=str(out))("the team won the match")
        assert prediction["label"] in set(TOPICS)
        assert {"loss/task", "loss/kd", "loss/hidden", "cka/enc_2_4"} <= tensorboard_tags(out)


def tensorboard_tags(out: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in out.glob("runs/**/events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags |= {tag.removeprefix("train/") for tag in accumulator.Tags()["scalars"]}
    return tags


def test_text_pair_with_existing_student_dir(tok, tmp_path):
    labels = ["contradiction", "entailment"]
    teacher = save_model(tiny_bert(tok, labels=labels), tok, tmp_path / "teacher")
    student = save_model(
        tiny_bert(tok, labels=labels, hidden=16, layers=2, seed=1), tok, tmp_path / "student_init"
    )
    rows = [
        [a, b, labels[i % 2]]
        for i, (a, b) in enumerate(
            zip(SENTENCES * 3, SENTENCES[1:] + SENTENCES[:1] + SENTENCES * 2, strict=True)
        )
    ]
    train = write_csv(tmp_path / "pairs.csv", ["premise", "hypothesis", "label"], rows)
    out = tmp_path / "out"
    argv = distill_argv(teacher, train, out, "--student", str(student))
    rc = main(
        [*argv, "--text_column", "premise", "--text_pair_column", "hypothesis", "--layer_map", "0:0,1:2,2:4"]
    )
    assert rc == 0
    assert all(math.isfinite(e["loss/hidden"]) for e in log_history(out) if "loss" in e)
    assert_loads_cleanly(out)


def test_regression(tok, tmp_path):
    teacher = save_model(tiny_bert(tok, labels=None), tok, tmp_path / "teacher")
    rows = [[s, float(i % 5) / 2] for i, s in enumerate(SENTENCES * 4)]
    train = write_csv(tmp_path / "sts.csv", ["text", "score"], rows)
    out = tmp_path / "out"
    rc = main([*distill_argv(teacher, train, out, *SHAPES["cka"]), "--label_column", "score"])
    assert rc == 0
    logs = [e for e in log_history(out) if "loss" in e]
    assert all(math.isfinite(e["loss/task"]) and math.isfinite(e["loss/kd"]) for e in logs)
    results = json.loads((out / "all_results.json").read_text())
    assert "eval_pearson" in results and "eval_mse" in results
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_low_label_regime_trains_on_unlabelled_rows(teacher_dir, train_csv, tmp_path, recording):
    out = tmp_path / "out"
    rc = main([*distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"]), "--labelled_fraction", "0.2"])
    assert rc == 0
    (trainer,) = recording
    train_labels = trainer.train_dataset["labels"]
    unlabelled = sum(label == -100 for label in train_labels)
    assert 0 < unlabelled < len(train_labels)
    assert unlabelled >= 0.6 * len(train_labels)  # ~80% of the rows lost their label
    logs = [e for e in log_history(out) if "loss" in e]
    assert all(math.isfinite(e["loss/task"]) and math.isfinite(e["loss/hidden"]) for e in logs)


def test_all_unlabelled_batches_give_zero_task_loss(teacher_dir, train_csv, tmp_path):
    out = tmp_path / "out"
    # One labelled row per class out of 36 training rows: most batches of 2 hold no label at all.
    argv = [*distill_argv(teacher_dir, train_csv, out, *SHAPES["cka"]), "--labelled_fraction", "0.01"]
    assert main([*argv, "--per_device_train_batch_size", "2", "--max_steps", "6"]) == 0
    task = [e["loss/task"] for e in log_history(out) if "loss" in e]
    assert all(math.isfinite(v) for v in task) and 0.0 in task


def test_resume_from_checkpoint_restores_projections(teacher_dir, train_csv, tmp_path, recording):
    out = tmp_path / "out"
    shape = [*SHAPES["mse_proj"], "--hidden_loss", "mse_proj", "--save_steps", "2"]
    assert main([*distill_argv(teacher_dir, train_csv, out, *shape), "--max_steps", "2"]) == 0
    checkpoint = out / "checkpoint-2"
    assert (checkpoint / PROJECTIONS_FILE).is_file()

    argv = [*distill_argv(teacher_dir, train_csv, out, *shape), "--max_steps", "4"]
    assert main([*argv, "--resume_from_checkpoint", str(checkpoint)]) == 0
    resumed = recording[-1]
    assert resumed.state.global_step == 4
    assert [e["step"] for e in log_history(out) if "loss" in e] == [1, 2, 3, 4]
    with safe_open(str(checkpoint / PROJECTIONS_FILE), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            torch.testing.assert_close(resumed.projections_after_load[key], handle.get_tensor(key))
    assert (out / "checkpoint-4" / PROJECTIONS_FILE).is_file()
    assert_loads_cleanly(out)


# ---------------------------------------------------------------------------------------------------
# Early, actionable errors.
# ---------------------------------------------------------------------------------------------------


def test_missing_column_is_reported_with_the_flag(teacher_dir, train_csv, tmp_path, capsys):
    from ckadistill.cli import main as cli_main  # through the `ckadistill` dispatcher

    argv = distill_argv(teacher_dir, train_csv, tmp_path / "o", *SHAPES["cka"])
    rc = cli_main(["distill", *argv, "--text_column", "sentence"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "'sentence'" in err and "--text_column" in err and "text, label" in err


def test_empty_data_file_is_reported(teacher_dir, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert main(distill_argv(teacher_dir, empty, tmp_path / "o", *SHAPES["cka"])) == 2
    assert "is empty" in capsys.readouterr().err


def test_vocabulary_mismatch_is_reported(tok, teacher_dir, train_csv, tmp_path, capsys):
    student = save_model(
        tiny_bert(tok, labels=sorted(set(TOPICS)), hidden=16, layers=2, vocab=len(tok) + 20),
        tok,
        tmp_path / "s",
    )
    rc = main(distill_argv(teacher_dir, train_csv, tmp_path / "o", "--student", str(student)))
    assert rc == 2
    err = capsys.readouterr().err
    assert f"teacher vocab_size {len(tok)}" in err and f"student vocab_size {len(tok) + 20}" in err
    assert "tokenizer" in err


def test_pretrained_encoder_as_student_gets_the_teachers_head(tok, teacher_dir, train_csv, tmp_path):
    from transformers import BertModel

    encoder = BertModel(tiny_bert(tok, labels=None, hidden=16, layers=2).config)  # placeholder labels only
    student = save_model(encoder, tok, tmp_path / "encoder")
    out = tmp_path / "out"
    assert main(distill_argv(teacher_dir, train_csv, out, "--student", str(student))) == 0
    saved = AutoModelForSequenceClassification.from_pretrained(out)
    assert saved.config.id2label == dict(enumerate(sorted(set(TOPICS))))
    assert_loads_cleanly(out)


def test_student_with_other_labels_is_rejected(tok, teacher_dir, train_csv, tmp_path, capsys):
    student = save_model(tiny_bert(tok, labels=["x", "y"], hidden=16, layers=2), tok, tmp_path / "s")
    assert main(distill_argv(teacher_dir, train_csv, tmp_path / "o", "--student", str(student))) == 2
    assert "a student needs the teacher's label set" in capsys.readouterr().err


def test_distill_cli_with_cache(teacher_dir, train_csv, tmp_path):
    out = tmp_path / "student"
    argv = distill_argv(teacher_dir, train_csv, out, "--cache_teacher", "true", "--student_layers", "2")
    assert main([*argv, "--student_hidden_size", "16", "--student_heads", "2"]) == 0
    logs = [entry for entry in log_history(out) if "loss/hidden" in entry]
    assert logs and all(math.isfinite(entry["loss/hidden"]) for entry in logs)
    assert (out / "model.safetensors").is_file()


def test_train_windows_distil_every_window_through_the_cache(teacher_dir, train_csv, tmp_path):
    out = tmp_path / "student"
    argv = distill_argv(teacher_dir, train_csv, out, "--cache_teacher", "true", "--train_windows", "3")
    assert main([*argv, "--max_length", "8", "--student_layers", "2", "--student_hidden_size", "16"]) == 0
    card = (out / "README.md").read_text()
    texts = len(topic_rows())
    rows = int(re.search(r"train ([\d,]+)", card).group(1).replace(",", ""))
    assert texts < rows <= 3 * texts  # the 8-token windows of the longer texts became rows
    assert "windows per training text (at most): `3`" in card


def test_freeze_bottom_layers_leaves_only_the_top_trainable():
    from transformers import BertConfig, BertForSequenceClassification

    from ckadistill.tasks.classification import freeze_bottom_layers

    model = BertForSequenceClassification(
        BertConfig(
            vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32
        )
    )
    before = {n: p.clone() for n, p in model.named_parameters()}
    frozen = freeze_bottom_layers(model, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.startswith(("bert.encoder.layer.3.", "bert.pooler.", "classifier.")) for n in trainable
    )
    assert frozen == sum(p.numel() for n, p in model.named_parameters() if n not in trainable)
    assert (
        any(n.startswith("bert.embeddings.") for n in before)
        and "bert.embeddings.word_embeddings.weight" not in trainable
    )
    with pytest.raises(ValueError, match="--freeze_layers 4"):
        freeze_bottom_layers(model, 4)
