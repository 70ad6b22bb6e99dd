"""`ckadistill export`: tiny BERT classifiers as ONNX, run by onnxruntime beside PyTorch; bad input refused
before any work. Offline: models and tokenizers are built in code."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoTokenizer, BartConfig, BartForConditionalGeneration, BertModel

import ckadistill.export as export_module
from ckadistill.commands.export import main
from ckadistill.export import SAMPLE_SENTENCES, compare, read_labelled_file
from conftest import SENTENCES, build_tokenizer
from test_distill_cli import TOPICS, save_model, tiny_bert, topic_rows, write_csv

ort = pytest.importorskip("onnxruntime")  # a guard only: `make test` installs the [onnx] extra
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("one_thread")

LABELS = sorted(set(TOPICS))
BERT_INPUTS = ["input_ids", "token_type_ids", "attention_mask"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of `ckadistill export ARGV`."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def save_student(path: Path, *, seed: int = 0, token_type_ids: bool = True) -> Path:
    """A 2-layer BERT classifier over the fixture topics, tokenizer beside it.

    With `token_type_ids` the tokenizer makes them too, as BERT's own does (the built-in one does not).
    """
    tokenizer = build_tokenizer()
    save_model(tiny_bert(tokenizer, labels=LABELS, layers=2, seed=seed), tokenizer, path)
    if token_type_ids:
        config_file = path / "tokenizer_config.json"
        config = json.loads(config_file.read_text())
        config_file.write_text(json.dumps({**config, "model_input_names": BERT_INPUTS}))
    return path


def pytorch_logits(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """PyTorch's logits for `texts` and the numpy inputs that produced them."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**encoded).logits.numpy()
    return logits, {name: tensor.numpy() for name, tensor in encoded.items()}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return save_student(tmp_path_factory.mktemp("export") / "student")


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "test.csv", ["text", "label"], topic_rows(2))


@pytest.fixture(scope="module")
def exported(one_thread, student, test_csv, tmp_path_factory):
    """One full run: fp32 and int8 files, accuracy on a csv, batch size 4."""
    out = tmp_path_factory.mktemp("exported") / "onnx"
    status, printed, errors = run_cli(
        [str(student), "--output", str(out), "--int8", "--data", str(test_csv), "--batch_size", "4"]
    )
    assert status == 0, errors
    return out, printed


# ---------------------------------------------------------------------------------------------------
# The export itself.
# ---------------------------------------------------------------------------------------------------


def test_output_folder_is_self_contained(exported):
    out, _ = exported
    assert {path.name for path in out.iterdir()} == {
        "model.onnx",
        "model_int8.onnx",
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "export_report.json",
    }
    assert AutoConfig.from_pretrained(out).id2label == dict(enumerate(LABELS))
    assert list(AutoTokenizer.from_pretrained(out)(["the film"]).keys()) == BERT_INPUTS


def test_onnx_matches_pytorch_on_new_batch_and_sequence_sizes(exported, student):
    """The export saw 2 sentences of one length; batches of 1 and 7 of other lengths must work too."""
    out, _ = exported
    example_shape = build_tokenizer()(SAMPLE_SENTENCES[:2], padding=True, return_tensors="np")[
        "input_ids"
    ].shape
    short, long = SENTENCES[1:2], [*SENTENCES[:6], f"{SENTENCES[6]} and {SENTENCES[7]}"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert {node.name: node.shape for node in session.get_inputs()} == {
        name: ["batch", "sequence"] for name in BERT_INPUTS
    }
    assert [node.name for node in session.get_outputs()] == ["logits"]
    for texts in (short, long):
        reference, inputs = pytorch_logits(student, texts)
        assert (
            inputs["input_ids"].shape[0] != example_shape[0]
            and inputs["input_ids"].shape[1] != example_shape[1]
        )
        (logits,) = session.run(["logits"], inputs)
        assert logits.shape == (len(texts), len(LABELS))
        np.testing.assert_allclose(logits, reference, atol=1e-5)


def test_int8_file_is_smaller_and_runs(exported, student):
    out, _ = exported
    assert (out / "model_int8.onnx").stat().st_size < 0.75 * (out / "model.onnx").stat().st_size
    session = ort.InferenceSession(str(out / "model_int8.onnx"), providers=["CPUExecutionProvider"])
    reference, inputs = pytorch_logits(student, SENTENCES[:3])
    (logits,) = session.run(["logits"], inputs)
    assert logits.shape == reference.shape and np.isfinite(logits).all()


def test_report_and_table_put_the_three_models_side_by_side(exported, test_csv):
    out, printed = exported
    report = json.loads((out / "export_report.json").read_text())
    rows = {row["name"]: row for row in report["models"]}
    assert list(rows) == ["PyTorch fp32", "ONNX fp32", "ONNX int8"]
    assert report["examples"] == len(topic_rows(2)) and report["examples_from"] == str(test_csv)
    assert report["logits_agree"] and report["accuracy_agrees"]
    assert rows["ONNX fp32"]["max_abs_logit_diff"] <= report["tolerance"]
    assert abs(rows["ONNX fp32"]["correct"] - rows["PyTorch fp32"]["correct"]) <= 1
    assert rows["ONNX int8"]["accuracy"] is not None and rows["ONNX int8"]["max_abs_logit_diff"] is not None
    for row in rows.values():
        assert (
            row["size_mb"] > 0 and row["examples_per_second_bs1"] > 0 and row["examples_per_second_bs4"] > 0
        )

    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | file | size (MB) | max abs Δ logit | accuracy | ex/s (batch 1)")
    assert "ex/s (batch 4)" in lines[0]
    assert [line.split(" | ")[1] for line in lines[1:]] == [
        "model.safetensors",
        "model.onnx",
        "model_int8.onnx",
    ]
    assert "ONNX fp32 agrees with PyTorch" in printed


def test_without_data_uses_built_in_sentences_and_drops_a_stale_int8_file(tmp_path):
    """A tokenizer without token_type_ids gives a two-input graph; --overwrite_output_dir replaces files."""
    student = save_student(tmp_path / "student", token_type_ids=False)
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "model_int8.onnx").write_text("from an earlier --int8 run")
    status, printed, errors = run_cli([str(student), "--output", str(out), "--overwrite_output_dir"])
    assert status == 0, errors
    assert not (out / "model_int8.onnx").exists()
    report = json.loads((out / "export_report.json").read_text())
    assert report["inputs"] == ["input_ids", "attention_mask"]
    assert report["examples_from"] == "built-in sentences"
    assert [row["accuracy"] for row in report["models"]] == [None, None]
    assert "| ONNX fp32 | model.onnx |" in printed and "ONNX int8" not in printed


def test_wrong_onnx_file_fails_the_parity_check(exported, tmp_path, monkeypatch):
    """Another model's graph (same shapes, other weights) in place of the export: exit 1, report kept."""
    out, _ = exported

    def export_the_wrong_model(model, tokenizer, path, *, max_length):
        shutil.copy(out / "model.onnx", path)
        return BERT_INPUTS

    monkeypatch.setattr(export_module, "export_onnx", export_the_wrong_model)
    other = save_student(tmp_path / "other", seed=1)
    status, printed, errors = run_cli([str(other), "--output", str(tmp_path / "onnx")])
    assert status == 1
    assert "ONNX fp32 logits differ from PyTorch" in errors and "do not deploy" in errors
    assert "| ONNX fp32 | model.onnx |" in printed
    assert json.loads((tmp_path / "onnx" / "export_report.json").read_text())["logits_agree"] is False


# ---------------------------------------------------------------------------------------------------
# Parity rules and data reading, without an export.
# ---------------------------------------------------------------------------------------------------


def test_compare_uses_a_tolerance_relative_to_the_logit_scale():
    reference = np.array([[10.0, -10.0], [0.0, 5.0]])
    assert compare(reference, reference + 0.009).logits_agree  # 1e-3 x scale 10
    assert not compare(reference, reference + 0.011).logits_agree
    tiny = np.array([[0.01, -0.01]])
    assert compare(tiny, tiny + 5e-4).logits_agree  # the scale is at least 1


def test_compare_allows_one_example_of_accuracy_difference():
    reference = np.array([[1.0, 0.0]] * 4)
    labels = [0, 0, 0, 0]
    one_flipped = np.array([[0.0, 1.0]] + [[1.0, 0.0]] * 3)
    two_flipped = np.array([[0.0, 1.0]] * 2 + [[1.0, 0.0]] * 2)
    assert compare(reference, one_flipped, labels).accuracy_agrees
    comparison = compare(reference, two_flipped, labels)
    assert not comparison.accuracy_agrees and (comparison.correct, comparison.reference_correct) == (2, 4)


def test_labels_may_be_names_or_class_indices(student, tmp_path):
    config = AutoConfig.from_pretrained(student)
    data = tmp_path / "mixed.jsonl"
    rows = [{"sentence": "the film", "topic": "sport"}, {"sentence": "the match", "topic": 3}]
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    texts, labels = read_labelled_file(data, config, text_column="sentence", label_column="topic")
    assert texts == ["the film", "the match"] and labels == [config.label2id["sport"], 3]


# ---------------------------------------------------------------------------------------------------
# Refusals: exit status 2, a message naming the fix, nothing written.
# ---------------------------------------------------------------------------------------------------


def test_existing_output_folder_is_left_untouched(student, tmp_path):
    out = tmp_path / "onnx"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    status, _, errors = run_cli([str(student), "--output", str(out)])
    assert status == 2 and "--overwrite_output_dir" in errors
    assert [path.name for path in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_missing_folder_and_missing_weights_are_refused(tmp_path):
    status, _, errors = run_cli([str(tmp_path / "nowhere"), "--output", str(tmp_path / "onnx")])
    assert status == 2 and "is not a folder" in errors

    bare = tmp_path / "bare"
    tokenizer = build_tokenizer()
    tiny_bert(tokenizer, labels=LABELS, layers=1).config.save_pretrained(bare)
    tokenizer.save_pretrained(bare)
    status, _, errors = run_cli([str(bare), "--output", str(tmp_path / "onnx")])
    assert status == 2 and "holds no weights" in errors and "save_pretrained" in errors
    assert not (tmp_path / "onnx").exists()


def test_a_model_without_classification_head_is_refused(tmp_path):
    tokenizer = build_tokenizer()
    encoder = BertModel(tiny_bert(tokenizer, labels=LABELS, layers=1).config)
    model_dir = save_model(encoder, tokenizer, tmp_path / "encoder")
    status, _, errors = run_cli([str(model_dir), "--output", str(tmp_path / "onnx")])
    assert status == 2 and "BertModel, not a sequence classifier" in errors
    assert not (tmp_path / "onnx").exists()


def test_an_encoder_decoder_is_refused_with_the_reason(tmp_path):
    tokenizer = build_tokenizer()
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
    )
    model_dir = save_model(BartForConditionalGeneration(config), tokenizer, tmp_path / "bart")
    status, _, errors = run_cli([str(model_dir), "--output", str(tmp_path / "onnx")])
    assert status == 2 and "encoder-decoder model (bart)" in errors and "not supported yet" in errors
    assert "key/value cache" in errors


def test_a_bad_label_is_refused_before_the_export(student, tmp_path):
    data = write_csv(tmp_path / "bad.csv", ["text", "label"], [["the film", "weather"]])
    status, _, errors = run_cli([str(student), "--output", str(tmp_path / "onnx"), "--data", str(data)])
    assert status == 2 and "row 1: label 'weather'" in errors and "--label_column" in errors
    assert not (tmp_path / "onnx").exists()


def test_missing_onnx_packages_name_the_extra(student, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # find_spec reports it as not installed
    status, _, errors = run_cli([str(student), "--output", str(tmp_path / "onnx")])
    assert status == 2 and 'pip install "ckadistill[onnx]"' in errors and "onnxruntime" in errors
    assert not (tmp_path / "onnx").exists()


def test_max_length_defaults_to_the_length_the_model_was_distilled_with(tmp_path):
    from ckadistill.commands.export import parse

    argv = [str(tmp_path), "--output", str(tmp_path / "onnx")]
    assert parse(argv).max_length == 128  # no record beside the model
    (tmp_path / "ckadistill_config.yaml").write_text("max_length: 192\n", encoding="utf-8")
    assert parse(argv).max_length == 192
    assert parse([*argv, "--max_length", "64"]).max_length == 64
