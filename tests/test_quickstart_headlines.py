"""The offline headline job (`ckadistill quickstart --task summarization`) and what it needs: the BBC lead →
headline splits, the higher learning rate of a bert2bert's fresh parameters, and the CLI dispatch. The job
itself runs end to end on the real MiniLM and BBC News, shrunk to a few rows and tokens."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, EncoderDecoderModel, TrainerCallback

from ckadistill import bbc
from ckadistill.analysis import load_cka_csv
from ckadistill.commands.quickstart import main, split_task
from ckadistill.config import (
    DataArguments,
    FinetuneModelArguments,
    GenerationArguments,
    TaskTrainingArguments,
)
from ckadistill.quickstart_headlines import (
    FAST_NOTE,
    HeadlineQuickstartArguments,
    run_headline_quickstart,
    train_teacher,
    write_report,
)
from ckadistill.tasks.seq2seq import run_finetune
from ckadistill.warm_start import fresh_lr_optimizer, fresh_parameter_names
from conftest import SENTENCES, build_tokenizer
from test_distill_cli import save_model, write_csv
from test_trainer_seq2seq import bart_like, bert2bert

pytestmark = pytest.mark.usefixtures("one_thread")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---- data: lead -> headline splits ----------------------------------------------------------------


def test_headline_splits_hold_the_articles_of_the_topic_splits(tmp_path):
    topics = bbc.write_splits(tmp_path / "topics", seed=0)
    headlines = bbc.write_headline_splits(tmp_path / "headlines", seed=0)
    assert sorted(headlines) == sorted(bbc.SPLITS)
    for split in bbc.SPLITS:
        text_rows, headline_rows = read_rows(topics[split]), read_rows(headlines[split])
        assert [r["id"] for r in headline_rows] == [r["id"] for r in text_rows]  # same articles, same order
        assert list(headline_rows[0]) == ["id", "source", "target", "label"]
        for text_row, row in zip(text_rows, headline_rows, strict=True):
            assert row["label"] == text_row["label"]
            # the article's text is its headline, then its lead, then the rest of the body
            assert text_row["text"].startswith(f"{row['target']} {row['source']}")


def test_sources_are_the_lead_paragraphs_and_targets_the_headlines(tmp_path):
    article = next(row for row in bbc.load_headline_articles() if row["id"] == "business/001")
    assert article["headline"] == "Ad sales boost Time Warner profit"
    two = {r["id"]: r for r in read_rows(bbc.write_headline_splits(tmp_path / "two", seed=0)["train"])}
    one = {r["id"]: r for r in read_rows(bbc.write_headline_splits(tmp_path / "one", lead_lines=1)["train"])}
    some = next(iter(two))
    body = next(row for row in bbc.load_headline_articles() if row["id"] == some)["body"]
    assert two[some]["source"] == f"{body[0]} {body[1]}"
    assert one[some]["source"] == body[0]
    assert one[some]["target"] == two[some]["target"]
    with pytest.raises(ValueError, match="--lead_lines must be >= 1"):
        bbc.write_headline_splits(tmp_path / "none", lead_lines=0)


# ---- the fresh parameters' learning rate ------------------------------------------------------------


@pytest.fixture
def tiny_bert2bert():
    torch.manual_seed(0)
    return bert2bert(32, 2)


def test_fresh_parameters_are_cross_attention_and_the_lm_head_transform(tiny_bert2bert):
    names = [n for n, _ in tiny_bert2bert.named_parameters()]
    fresh = set(fresh_parameter_names(tiny_bert2bert))
    assert fresh == {n for n in names if "crossattention" in n or n.startswith("decoder.cls.predictions.")}
    assert (
        len([n for n in fresh if "crossattention" in n]) == 2 * 10
    )  # 2 layers × (q, k, v, output, LayerNorm) × (weight, bias)
    assert "decoder.cls.predictions.transform.dense.weight" in fresh
    assert not any(n.startswith("encoder.") or "word_embeddings" in n for n in fresh)


def test_fresh_groups_get_the_multiplied_rate_and_the_trainers_weight_decay(tiny_bert2bert, tmp_path):
    from transformers import Seq2SeqTrainer

    model = tiny_bert2bert
    args = TaskTrainingArguments(
        output_dir=str(tmp_path), learning_rate=2e-4, weight_decay=0.01, warmup_steps=2, eval_strategy="no"
    )
    optimizer = fresh_lr_optimizer(model, args, 5.0)
    groups = optimizer.param_groups
    assert [g["lr"] for g in groups] == pytest.approx([2e-4, 2e-4, 1e-3, 1e-3])
    assert [g["weight_decay"] for g in groups] == [0.01, 0.0, 0.01, 0.0]
    name = {id(p): n for n, p in model.named_parameters()}
    fresh = set(fresh_parameter_names(model))
    assert all(name[id(p)] not in fresh for g in groups[:2] for p in g["params"])
    assert all(name[id(p)] in fresh for g in groups[2:] for p in g["params"])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters())  # each parameter exactly once

    # Weight decay exactly where the Trainer's own optimizer puts it (none on biases and LayerNorm).
    plain = Seq2SeqTrainer(model=model, args=args).create_optimizer()
    trainer_decay = {id(p) for g in plain.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]} == trainer_decay
    assert not any("bias" in name[i] or "LayerNorm" in name[i] for i in trainer_decay)

    # Handed over as optimizers=(optimizer, None), it gets the Trainer's schedule, every group alike.
    trainer = Seq2SeqTrainer(model=model, args=args, optimizers=(optimizer, None))
    scheduler = trainer.create_scheduler(num_training_steps=10)
    for _ in range(6):
        rates = scheduler.get_last_lr()
        assert rates[2] == pytest.approx(5 * rates[0]) and rates[1] == rates[0]
        optimizer.step()
        scheduler.step()
    assert 0 < scheduler.get_last_lr()[0] < 2e-4  # past warm-up, decaying


def test_fresh_lr_needs_fresh_parameters_and_a_positive_multiplier(tmp_path):
    from transformers import BartConfig, BartForConditionalGeneration

    bart = bart_like(BartConfig, BartForConditionalGeneration, 32, 2)
    args = TaskTrainingArguments(output_dir=str(tmp_path), report_to="none")
    with pytest.raises(ValueError, match="--fresh_lr_multiplier 5 found no fresh parameters in this bart"):
        fresh_lr_optimizer(bart, args, 5.0)
    with pytest.raises(ValueError, match="--fresh_lr_multiplier must be > 0"):
        FinetuneModelArguments(model_name_or_path="m", fresh_lr_multiplier=0.0)


class RecordRates(TrainerCallback):
    def __init__(self):
        self.rates: list[list[float]] = []

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.rates.append([g["lr"] for g in optimizer.param_groups])


def test_run_finetune_trains_the_fresh_parameters_faster(tiny_bert2bert, tmp_path):
    tokenizer = build_tokenizer()
    teacher = save_model(tiny_bert2bert, tokenizer, tmp_path / "bert2bert")
    rows = [[s, " ".join(s.split()[:3])] for s in SENTENCES]
    data = DataArguments(
        task="summarization",
        train_file=str(write_csv(tmp_path / "train.csv", ["source", "target"], rows)),
        max_source_length=16,
        max_target_length=8,
        validation_split_fraction=0.0,
    )
    record = RecordRates()
    training = TaskTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        eval_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
    )
    run_finetune(
        FinetuneModelArguments(model_name_or_path=str(teacher), fresh_lr_multiplier=3.0),
        data,
        training,
        GenerationArguments(max_new_tokens=3),
        callbacks=[record],
    )
    assert len(record.rates) == 3
    for rates in record.rates:
        assert len(rates) == 4 and rates[2] == pytest.approx(3 * rates[0])


# ---- the job end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("quickstart_headlines")
    args = HeadlineQuickstartArguments(
        output_dir=str(root / "out"),
        teacher_cache_dir=str(root / "cache"),
        max_train_samples=16,
        max_eval_samples=8,
        max_source_length=32,
        max_target_length=12,
        teacher_epochs=1,
        student_epochs=1,
        max_new_tokens=4,
    )
    return args, run_headline_quickstart(args)


def test_report_has_both_rows_the_examples_and_both_heatmaps(smoke):
    args, result = smoke
    rows = result["rows"]
    assert rows[0]["parameters"] == 49_010_490  # bert2bert from MiniLM on both sides
    assert rows[0]["parameters"] / rows[1]["parameters"] >= 4  # the default student: 2+2 × 128, 8.9M
    assert all("rouge2" in row and row["examples"] == 8 for row in rows)
    report_dir = Path(args.output_dir) / "report"
    text = Path(result["report"]).read_text(encoding="utf-8")
    assert "| teacher (bert2bert MiniLM-L6-H384) |" in text and "| student (ckadistill) |" in text
    examples = result["examples"]
    assert len(examples) == 5 and set(examples[0]) == {"source", "reference", "teacher", "student"}
    test_rows = read_rows(Path(args.output_dir) / "data" / "test.csv")
    assert [e["reference"] for e in examples] == [r["target"] for r in test_rows[:5]]
    assert "| reference | teacher | student |" in text and examples[0]["reference"] in text
    for name in ("loss_curves.png", "cka_encoder.png", "cka_decoder.png"):
        assert (report_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for part in ("encoder", "decoder"):
        assert load_cka_csv(report_dir / f"cka_{part}.csv").shape == (7, 3)  # MiniLM 6 layers, student 2
    saved = json.loads((report_dir / "results.json").read_text(encoding="utf-8"))
    assert saved["examples"] == examples and [r["parameters"] for r in saved["rows"]] == [
        r["parameters"] for r in rows
    ]


def test_student_reloads_and_generates(smoke):
    _, result = smoke
    student = Path(result["student"])
    model, info = AutoModelForSeq2SeqLM.from_pretrained(student, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(model) is EncoderDecoderModel
    config = model.config
    assert (config.encoder.num_hidden_layers, config.decoder.num_hidden_layers) == (2, 2)
    assert config.encoder.hidden_size == config.decoder.hidden_size == 128
    assert "checkpoint" not in " ".join(p.name for p in student.iterdir())
    tokenizer = AutoTokenizer.from_pretrained(student)
    inputs = tokenizer(["Shares in the bank rose as profits beat forecasts."], return_tensors="pt")
    out = model.generate(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=3
    )
    assert out[0, 0].item() == tokenizer.cls_token_id and out.shape[1] <= 4  # starts from [CLS]
    recorded = yaml.safe_load((student / "ckadistill_config.yaml").read_text(encoding="utf-8"))
    assert recorded["cache_teacher"] is True  # the teacher ran once over the training rows


def test_teacher_is_cached_and_reused(smoke):
    args, result = smoke
    teacher = Path(result["teacher"])
    assert train_teacher(args, {}) == teacher  # no data needed: cached
    assert (Path(args.output_dir) / "teacher").resolve() == teacher.resolve()  # the stable path
    assert not teacher.with_name(teacher.name + ".partial").exists()
    config = yaml.safe_load((teacher / "ckadistill_config.yaml").read_text(encoding="utf-8"))
    assert config["fresh_lr_multiplier"] == args.cross_attention_lr_multiplier == 5.0
    assert config["test_file"] is None  # the test split is scored once, in the evaluate phase
    other = HeadlineQuickstartArguments(**{**vars(args), "cross_attention_lr_multiplier": 1.0})
    assert other.teacher_key() != args.teacher_key()


def test_phase_times_are_returned(smoke):
    _, result = smoke
    assert {"data", "teacher", "student", "evaluate", "report", "total"} <= set(result["seconds"])


# ---- settings and the command -----------------------------------------------------------------------


def test_fast_applies_its_budget_to_unset_settings_only():
    fast = HeadlineQuickstartArguments(fast=True, student_epochs=4.0)
    assert fast.output_dir == "outputs/quickstart-headlines-fast"
    assert (fast.max_train_samples, fast.max_eval_samples) == (160, 40)
    assert (fast.teacher_epochs, fast.student_epochs) == (1.0, 4.0)  # student_epochs given, so kept
    assert fast.teacher_key() != HeadlineQuickstartArguments().teacher_key()
    assert HeadlineQuickstartArguments(fast=True, output_dir="elsewhere").output_dir == "elsewhere"


def test_fast_report_says_its_numbers_are_not_published(tmp_path):
    args = HeadlineQuickstartArguments(fast=True, output_dir=str(tmp_path))
    examples = [{"source": "s", "reference": "a | b", "teacher": "t", "student": "u"}]
    text = write_report(tmp_path, "TABLE", examples, args, tmp_path / "t", {"total": 60.0}).read_text()
    assert f"**Smoke run (`--fast`)**: {FAST_NOTE}" in text
    assert "| a \\| b | t | u |" in text  # pipes in headlines do not break the table


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--task", "summarization", "--student_init", "magic"],
            "--student_init must be pca, slice or random",
        ),
        (["--task=summarization", "--lead_lines", "0"], "--lead_lines must be >= 1"),
        (["--task", "summarization", "--student_hidden_size", "100"], "a multiple of 32"),
        (["--task", "summarization", "--student_encoder_layers", "7"], "must be in [1, 6]"),
        (["--task", "translation"], "--task must be classification or summarization"),
        (["--task"], "--task needs a value"),
        (
            ["--task", "classification", "--student_init", "magic"],
            "--student_init must be pca, slice or random",
        ),
    ],
)
def test_bad_flags_return_2(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_task_picks_the_job_and_its_flags(capsys):
    assert split_task(["--fast", "--task", "summarization", "--seed", "1"]) == (
        "summarization",
        ["--fast", "--seed", "1"],
    )
    assert split_task(["--fast"]) == ("classification", ["--fast"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--task", "summarization", "--help"])
    assert exit_info.value.code == 0
    headline_help = capsys.readouterr().out
    assert "--cross_attention_lr_multiplier" in headline_help and "--lead_lines" in headline_help
    with pytest.raises(SystemExit):
        main(["--help"])
    default_help = capsys.readouterr().out
    assert "--teacher_freeze_layers" in default_help and "--lead_lines" not in default_help
    assert "--task summarization" in default_help
