"""`ckadistill finetune` makes a loadable teacher; `ckadistill evaluate` compares models side by side."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertModel

from ckadistill.commands.distill import main as distill_main
from ckadistill.commands.evaluate import main as evaluate_main
from ckadistill.commands.finetune import main as finetune_main
from ckadistill.config import DataArguments
from ckadistill.tasks.classification import evaluate_models
from ckadistill.tasks.classification_metrics import results_table
from conftest import SENTENCES
from test_distill_cli import TOPICS, save_model, tiny_bert, topic_rows, write_csv

FAST = [
    "--max_steps",
    "3",
    "--per_device_train_batch_size",
    "8",
    "--logging_steps",
    "1",
    "--disable_tqdm",
    "true",
]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {
        "train": write_csv(root / "train.csv", ["text", "label"], topic_rows(4)),
        "test": write_csv(root / "test.csv", ["text", "label"], topic_rows(1)),
    }


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, data):
    """A base encoder (no classification head) fine-tuned through the CLI."""
    from conftest import build_tokenizer

    tokenizer = build_tokenizer()
    root = tmp_path_factory.mktemp("finetune")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    base = save_model(BertModel(config), tokenizer, root / "base")
    out = root / "teacher"
    argv = [
        "--model_name_or_path",
        str(base),
        "--train_file",
        str(data["train"]),
        "--test_file",
        str(data["test"]),
    ]
    assert finetune_main([*argv, "--output_dir", str(out), "--save_strategy", "no", *FAST]) == 0
    return out


def test_finetune_produces_a_loadable_teacher(finetuned):
    model, info = AutoModelForSequenceClassification.from_pretrained(finetuned, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.config.id2label == dict(enumerate(sorted(set(TOPICS))))
    results = json.loads((finetuned / "all_results.json").read_text())
    assert {"eval_accuracy", "test_accuracy", "test_macro_f1", "train_loss"} <= set(results)
    assert "fine-tuned" in (finetuned / "README.md").read_text()
    assert (finetuned / "ckadistill_config.yaml").is_file() and (finetuned / "tokenizer.json").is_file()


def test_evaluate_prints_both_models(finetuned, data, tmp_path, capsys):
    student = tmp_path / "student"
    shape = ["--student_layers", "2", "--student_hidden_size", "16", "--student_heads", "2"]
    argv = ["--teacher", str(finetuned), "--train_file", str(data["train"]), "--output_dir", str(student)]
    assert distill_main([*argv, *shape, *FAST, "--eval_strategy", "no", "--save_strategy", "no"]) == 0
    capsys.readouterr()

    table_file = tmp_path / "table.md"
    argv = [
        str(finetuned),
        str(student),
        "--data",
        str(data["test"]),
        "--speed_examples",
        "8",
        "--output",
        str(table_file),
    ]
    assert evaluate_main(argv) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | parameters | compression | accuracy | accuracy vs first | macro-F1")
    assert "ex/s (batch 1)" in lines[0] and "ex/s (batch 32)" in lines[0]
    assert lines[1].startswith("| teacher |") and lines[2].startswith("| student |")
    assert "1.00×" in lines[1] and "torch threads" in printed
    assert table_file.read_text().strip() == printed.strip()


def test_evaluate_models_rows(finetuned, data):
    rows = evaluate_models([str(finetuned)], DataArguments(test_file=str(data["test"])), speed_examples=4)
    (row,) = rows
    assert row["examples"] == len(SENTENCES) and row["speed_examples"] == 4
    assert row["parameters"] == sum(
        p.numel() for p in AutoModelForSequenceClassification.from_pretrained(finetuned).parameters()
    )
    assert (
        0.0 <= row["accuracy"] <= 1.0
        and row["examples_per_second_bs1"] > 0
        and row["examples_per_second_bs32"] > 0
    )
    assert row["torch_threads"] == 1


def test_evaluate_regression_model(tmp_path):
    from conftest import build_tokenizer

    tokenizer = build_tokenizer()
    model_dir = save_model(tiny_bert(tokenizer, labels=None), tokenizer, tmp_path / "sts")
    test = write_csv(tmp_path / "sts.csv", ["text", "score"], [[s, i / 3] for i, s in enumerate(SENTENCES)])
    (row,) = evaluate_models(
        [str(model_dir)], DataArguments(test_file=str(test), label_column="score"), speed_examples=2
    )
    assert {"pearson", "spearman", "mse"} <= set(row) and "accuracy" not in row


def test_results_table_is_relative_to_the_first_row():
    common = {"examples": 10, "speed_examples": 4, "device": "cpu", "torch_threads": 2}
    rows = [
        {
            "name": "big",
            "parameters": 400,
            "accuracy": 0.9,
            "examples_per_second_bs1": 10.0,
            "examples_per_second_bs32": 100.0,
            **common,
        },
        {
            "name": "small",
            "parameters": 100,
            "accuracy": 0.8,
            "examples_per_second_bs1": 30.0,
            "examples_per_second_bs32": 350.0,
            **common,
        },
    ]
    table = results_table(rows)
    assert "| small | 100 | 4.00× | 0.8000 | 88.9% | 30.0 | 350.0 | 3.50× |" in table


def test_evaluate_reports_a_missing_split(finetuned, data, capsys):
    assert evaluate_main([str(finetuned), "--test_file", str(data["test"]), "--split", "validation"]) == 2
    assert "--split validation is not in the data; available splits: test" in capsys.readouterr().err


def test_evaluate_reads_the_lengths_the_models_were_trained_with(tmp_path):
    from ckadistill.commands.evaluate import parse

    first, second, bare = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for folder, length in ((first, 40), (second, 96)):
        folder.mkdir()
        (folder / "ckadistill_config.yaml").write_text(f"max_length: {length}\nmax_source_length: 64\n")
    bare.mkdir()
    data = tmp_path / "test.csv"
    data.write_text("text,label\nsome words,a\n")
    data_args, _, _ = parse([str(first), str(second), str(bare), "--data", str(data)])
    assert (data_args.max_length, data_args.max_source_length) == (96, 64)  # the longest recorded
    data_args, _, _ = parse([str(first), "--data", str(data), "--max_length", "24"])
    assert data_args.max_length == 24  # a flag on the command line wins
    data_args, _, _ = parse([str(bare), "--data", str(data)])
    assert data_args.max_length == 128  # nothing recorded: the flag's default


def test_finetuning_twice_with_one_seed_gives_the_same_teacher(finetuned, data, tmp_path):
    """The new classification head is drawn after seeding, so a rerun reproduces the teacher exactly."""
    again = tmp_path / "again"
    argv = ["--model_name_or_path", str(finetuned.parent / "base"), "--train_file", str(data["train"])]
    argv += ["--test_file", str(data["test"]), "--output_dir", str(again), "--save_strategy", "no", *FAST]
    torch.manual_seed(1234)  # whatever the global random state before the run
    assert finetune_main(argv) == 0
    first = AutoModelForSequenceClassification.from_pretrained(finetuned).state_dict()
    second = AutoModelForSequenceClassification.from_pretrained(again).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
