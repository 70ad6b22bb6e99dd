"""`ckadistill finetune / distill / evaluate --task summarization|translation` through the real CLI entry points.

Tiny random encoder-decoders (BART, T5, Marian, bert2bert; width 32, 4+4 layers) saved with a word-level
tokenizer built in code; csv files of short sentences: summaries are their first words, translations
their words reversed. A few optimiser steps each, then generation on 4 validation and 4 test rows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tokenizers import processors
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, BartConfig, BartForConditionalGeneration

from ckadistill.commands.distill import main as distill_main
from ckadistill.commands.evaluate import main as evaluate_main
from ckadistill.commands.finetune import main as finetune_main
from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
    GenerationArguments,
    TaskTrainingArguments,
    parse_config,
)
from ckadistill.families import FAMILIES
from ckadistill.runs import CONFIG_FILE
from ckadistill.tasks.seq2seq_evaluate import results_table
from conftest import SENTENCES, build_tokenizer
from test_distill_cli import TOPICS, save_model, tiny_bert, write_csv
from test_trainer_seq2seq import bart_like, bert2bert, t5

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DISTILL_TYPES = (
    DistillModelArguments,
    DataArguments,
    DistillArguments,
    TaskTrainingArguments,
    GenerationArguments,
)
PAIRS = "0:0,1:2,2:4"  # 2-layer student stacks, 4-layer teacher stacks

FAST = [
    "--max_steps", "3", "--per_device_train_batch_size", "4", "--logging_steps", "1",
    "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
    "--max_source_length", "24", "--max_target_length", "16",
    "--max_new_tokens", "6", "--generation_batch_size", "4",
]  # fmt: skip
STUDENT = ["--student_encoder_layers", "2", "--student_decoder_layers", "2", "--student_hidden_size", "16"]


def seq2seq_tokenizer():
    """The word-level test tokenizer, ending every sequence with `</s>` (so generation can stop)."""
    tokenizer = build_tokenizer()
    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", special_tokens=[(eos, tokenizer.eos_token_id)]
    )
    return tokenizer


def tiny_bart(width: int = 32, layers: int = 4):
    torch.manual_seed(0)
    return bart_like(BartConfig, BartForConditionalGeneration, width, layers)


def tiny_marian():
    from transformers import MarianConfig, MarianMTModel

    torch.manual_seed(0)
    return bart_like(MarianConfig, MarianMTModel, 32, 4)


def tiny_t5_with_prefix():
    torch.manual_seed(0)
    model = t5(32, 4)
    model.config.task_specific_params = {"translation_en_to_de": {"prefix": "translate English to German: "}}
    return model


@pytest.fixture(scope="module")
def tok():
    return seq2seq_tokenizer()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Summarisation and translation csv files: 20 training rows, 4 validation and 4 test rows."""
    root = tmp_path_factory.mktemp("seq2seq_data")
    header = ["source", "target"]
    summary = [[s, " ".join(s.split()[:4])] for s in SENTENCES]
    reverse = [[s, " ".join(reversed(s.split()))] for s in SENTENCES]
    files = {}
    for task, rows in (("summarization", summary), ("translation", reverse)):
        files[task] = {
            "train": write_csv(root / f"{task}_train.csv", header, rows * 2),
            "validation": write_csv(root / f"{task}_validation.csv", header, rows[:4]),
            "test": write_csv(root / f"{task}_test.csv", header, rows[4:8]),
        }
    return files


def data_flags(files: dict, task: str) -> list[str]:
    return [
        "--task", task, "--train_file", str(files["train"]),
        "--validation_file", str(files["validation"]), "--test_file", str(files["test"]),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def bart_teacher(tmp_path_factory, tok):
    return save_model(tiny_bart(), tok, tmp_path_factory.mktemp("bart_teacher"))


def log_history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def assert_plain_seq2seq_model(out: Path, tok) -> None:
    """Loads with no missing or unexpected keys, holds no training-only weights, and generates."""
    model, info = AutoModelForSeq2SeqLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    with safe_open(str(out / "model.safetensors"), "pt") as handle:
        saved = set(handle.keys())
    assert saved <= set(model.state_dict())  # tied embeddings are saved once
    assert not any("projection" in key for key in saved)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.get_vocab() == tok.get_vocab()
    batch = tokenizer(["the team won the match"], return_tensors="pt")
    generated = model.generate(**batch, max_new_tokens=4)
    assert generated.shape[0] == 1 and generated.shape[1] > 1


def assert_every_pair_logged(out: Path) -> None:
    train_logs = [entry for entry in log_history(out) if "loss" in entry]
    assert len(train_logs) == 3
    for entry in train_logs:
        assert math.isfinite(entry["loss"]) and math.isfinite(entry["loss/kd"])
        for stack in ("enc", "dec"):
            for pair in PAIRS.split(","):
                value = entry[f"cka/{stack}_{pair.replace(':', '_')}"]
                assert math.isfinite(value) and 0.0 <= value <= 1.0


# ---------------------------------------------------------------------------------------------------
# Summarisation.
# ---------------------------------------------------------------------------------------------------


def test_finetune_summarization_saves_a_scored_model(bart_teacher, data, tok, tmp_path):
    out = tmp_path / "finetuned"
    argv = ["--model_name_or_path", str(bart_teacher), *data_flags(data["summarization"], "summarization")]
    during = ["--eval_strategy", "steps", "--eval_steps", "2", "--predict_with_generate", "true"]
    during += ["--eval_generation_samples", "2"]
    assert finetune_main([*argv, "--output_dir", str(out), *FAST, "--max_steps", "2", *during]) == 0
    assert_plain_seq2seq_model(out, tok)
    scores = results(out)
    assert {"eval_loss", "test_loss", "eval_rouge2", "test_rouge2", "test_rougeLsum", "train_loss"} <= set(
        scores
    )
    card = (out / "README.md").read_text()
    assert "pipeline_tag: summarization" in card and "AutoModelForSeq2SeqLM" in card and "Labels" not in card
    (evaluated,) = [e for e in log_history(out) if "eval_rouge2" in e]  # during training, on 2 rows
    assert evaluated["step"] == 2 and math.isfinite(evaluated["eval_loss"])

    # The saved configuration runs again; evaluation during training decodes as the final scores do.
    finetune_types = (FinetuneModelArguments, DataArguments, TaskTrainingArguments, GenerationArguments)
    _, data_args, training, generation = parse_config(finetune_types, [str(out / CONFIG_FILE)], prog="test")
    assert data_args.task == "summarization" and generation.eval_generation_samples == 2
    assert training.generation_num_beams == 1 and training.generation_max_length == 7


@pytest.fixture(scope="module")
def bart_student(bart_teacher, data, tmp_path_factory):
    """A CKA student distilled from the tiny BART teacher through the CLI (shared by several tests)."""
    out = tmp_path_factory.mktemp("bart_student") / "student"
    argv = [
        "--teacher", str(bart_teacher), *data_flags(data["summarization"], "summarization"),
        "--output_dir", str(out), *FAST, *STUDENT,
        "--alpha_task", "0.2", "--alpha_kd", "0.8",
    ]  # fmt: skip
    assert distill_main(argv) == 0
    return out


def test_distill_summarization_with_cka(bart_student, tok):
    out = bart_student
    assert_plain_seq2seq_model(out, tok)
    assert_every_pair_logged(out)
    assert all(math.isfinite(e["loss/hidden"]) for e in log_history(out) if "loss" in e)
    scores = results(out)
    for key in ("test_rouge2", "teacher_test_rouge2", "eval_rougeL", "teacher_eval_rougeL", "test_loss"):
        assert math.isfinite(scores[key]), key
    layer_map = json.loads((out / "layer_map.json").read_text())
    assert layer_map["encoder"] == PAIRS and layer_map["decoder"] == PAIRS
    assert layer_map["pairs"] == [[0, 0], [1, 2], [2, 4]] == layer_map["decoder_pairs"]
    card = (out / "README.md").read_text()
    assert "decoder layer map" in card and f"uniform -> {PAIRS}" in card and "Compression" in card
    assert "| decoder layers | 4 | 2 |" in card and "teacher (test) | rouge2" in card

    # The saved configuration runs again as it is, generation settings included.
    parsed = parse_config(DISTILL_TYPES, [str(out / "ckadistill_config.yaml")], prog="test")
    assert parsed[1].task == "summarization" and parsed[2].alpha_task == 0.2 and parsed[4].max_new_tokens == 6
    assert parsed[0].student_encoder_layers == 2 and parsed[0].student_decoder_layers == 2


def test_distill_mse_proj_with_generation_during_training(bart_teacher, data, tok, tmp_path):
    out = tmp_path / "student"
    argv = [
        "--teacher", str(bart_teacher), *data_flags(data["summarization"], "summarization"),
        "--output_dir", str(out), *FAST, *STUDENT, "--hidden_loss", "mse_proj",
        "--eval_strategy", "steps", "--eval_steps", "3",
        "--predict_with_generate", "true", "--eval_generation_samples", "2",
    ]  # fmt: skip
    assert distill_main(argv) == 0
    assert_plain_seq2seq_model(out, tok)  # the projections stayed out of the student
    assert_every_pair_logged(out)
    (during,) = [e for e in log_history(out) if "eval_rouge2" in e]  # 2 rows, tokenised references
    assert math.isfinite(during["eval_loss"]) and "eval_gen_len" in during
    assert {"test_rouge2", "teacher_test_rouge2"} <= set(results(out))


def test_evaluate_prints_teacher_and_student(bart_teacher, bart_student, data, tmp_path, capsys):
    capsys.readouterr()
    table_file = tmp_path / "table.md"
    argv = [
        "--task", "summarization", str(bart_teacher), str(bart_student),
        "--data", str(data["summarization"]["test"]), "--max_new_tokens", "6",
        "--latency_batch_size", "2", "--latency_new_tokens", "4", "--latency_examples", "4",
        "--output", str(table_file),
    ]  # fmt: skip
    assert evaluate_main(argv) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| model | parameters | compression | R-1 | R-2 | R-L | R-Lsum | R-2 vs first")
    for header in (
        "ms/example (batch 1)",
        "ms/example (batch 2)",
        "tokens/s (batch 2)",
        "speed-up (batch 2)",
    ):
        assert header in lines[0]
    assert lines[1].startswith(f"| {bart_teacher.name} | ") and "1.00×" in lines[1]
    assert lines[2].startswith("| student | ") and len(lines) == 3
    assert "exactly 4 tokens for the first 4 examples" in printed
    assert table_file.read_text().strip() == printed.strip()


def test_results_table_is_relative_to_the_first_row():
    common = {"examples": 4, "latency_batch_size": 8, "latency_new_tokens": 4, "latency_examples": 4}
    common |= {"device": "cpu", "torch_threads": 1}
    rows = [
        {"name": "t", "parameters": 400, "bleu": 20.0, "chrf": 50.0, "ms_per_example_bs1": 10.0,
         "ms_per_example_bs8": 4.0, "tokens_per_second_bs8": 1000.0, **common},
        {"name": "s", "parameters": 100, "bleu": 15.0, "chrf": 45.0, "ms_per_example_bs1": 5.0,
         "ms_per_example_bs8": 1.0, "tokens_per_second_bs8": 4000.0, **common},
    ]  # fmt: skip
    lines = results_table(rows).splitlines()
    assert "BLEU vs first" in lines[0] and "R-2" not in lines[0]
    assert "| s | 100 | 4.00× | 15.00 | 45.00 | 75.0% |" in lines[3] and lines[3].endswith("| 4.00× |")


# ---------------------------------------------------------------------------------------------------
# Translation and the other families.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["t5", "marian"])
def test_distill_translation(family, data, tok, tmp_path):
    teacher = save_model(
        tiny_t5_with_prefix() if family == "t5" else tiny_marian(), tok, tmp_path / "teacher"
    )
    out = tmp_path / "student"
    languages = ["--source_lang", "en", "--target_lang", "de"] if family == "t5" else []
    # Marian replays the teacher's outputs from a cache on disk; T5 runs its teacher live.
    cache = (
        ["--cache_teacher", "true", "--cache_teacher_dir", str(tmp_path / "c")] if family == "marian" else []
    )
    argv = [
        "--teacher", str(teacher), *data_flags(data["translation"], "translation"),
        "--output_dir", str(out), *FAST, *STUDENT, "--student_heads", "2", *languages, *cache,
    ]  # fmt: skip
    assert distill_main(argv) == 0
    assert len(list((tmp_path / "c").glob("teacher-outputs-*.safetensors"))) == (1 if cache else 0)
    assert_plain_seq2seq_model(out, tok)
    assert_every_pair_logged(out)
    scores = results(out)
    assert {"test_bleu", "test_chrf", "teacher_test_bleu", "eval_chrf"} <= set(scores)
    assert all(0.0 <= scores[k] <= 100.0 for k in ("test_bleu", "test_chrf"))
    card = (out / "README.md").read_text()
    assert "pipeline_tag: translation" in card
    if family == "t5":  # the prefix came from task_specific_params
        assert "translate English to German: " in card


@pytest.mark.skipif("encoder-decoder" not in FAMILIES, reason="bert2bert students are not supported yet")
def test_distill_bert2bert(data, tok, tmp_path):
    torch.manual_seed(0)
    teacher = save_model(bert2bert(32, 4), tok, tmp_path / "teacher")
    out = tmp_path / "student"
    argv = [
        "--teacher", str(teacher), *data_flags(data["summarization"], "summarization"),
        "--output_dir", str(out), *FAST, "--student_layers", "2", "--student_hidden_size", "16",
    ]  # fmt: skip
    assert distill_main(argv) == 0
    assert_plain_seq2seq_model(out, tok)
    assert_every_pair_logged(out)
    assert {"test_rouge2", "teacher_test_rouge2"} <= set(results(out))


# ---------------------------------------------------------------------------------------------------
# Early, actionable errors, and the preset.
# ---------------------------------------------------------------------------------------------------


def test_missing_target_column_names_the_flag(bart_teacher, data, tmp_path, capsys):
    from ckadistill.cli import main as cli_main  # through the `ckadistill` dispatcher

    argv = ["--teacher", str(bart_teacher), *data_flags(data["summarization"], "summarization")]
    rc = cli_main(
        ["distill", *argv, "--output_dir", str(tmp_path / "o"), *FAST, *STUDENT, "--target_column", "summary"]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "ckadistill distill: error:" in err
    assert "'summary'" in err and "--target_column" in err and "source, target" in err


def test_classification_teacher_with_a_seq2seq_task(data, tmp_path, capsys):
    tokenizer = build_tokenizer()
    classifier = save_model(tiny_bert(tokenizer, labels=sorted(set(TOPICS))), tokenizer, tmp_path / "clf")
    argv = ["--teacher", str(classifier), *data_flags(data["summarization"], "summarization")]
    assert distill_main([*argv, "--output_dir", str(tmp_path / "o"), *FAST, *STUDENT]) == 2
    err = capsys.readouterr().err
    assert "--task summarization needs an encoder-decoder model" in err and f"--teacher {classifier}" in err

    assert (
        evaluate_main(
            ["--task", "summarization", str(classifier), "--data", str(data["summarization"]["test"])]
        )
        == 2
    )
    assert (
        "ckadistill evaluate: error: --task summarization needs an encoder-decoder" in capsys.readouterr().err
    )


def test_summarization_preset_parses(tmp_path):
    path = CONFIGS / "summarization_cka.yaml"
    assert path.read_text().startswith("# Usage: ckadistill distill configs/summarization_cka.yaml")
    model, data, distill, training, generation = parse_config(
        DISTILL_TYPES, [str(path), "--output_dir", str(tmp_path)], prog="test"
    )
    assert data.task == "summarization" and data.is_seq2seq
    assert (distill.alpha_task, distill.alpha_kd, distill.alpha_hidden) == (0.2, 0.8, 1.0)
    assert distill.hidden_loss == "cka" and distill.hidden_reduction == "sum"
    assert distill.layer_map == distill.decoder_layer_map == "uniform"
    assert training.learning_rate == 1e-4 and training.output_dir == str(tmp_path)
    assert model.student_encoder_layers == model.student_decoder_layers == 3 and generation.num_beams == 6
