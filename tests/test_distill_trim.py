"""`ckadistill distill --trim_vocab`: students with a trimmed vocabulary, the teacher reading their ids.

Tiny BERT classifiers and BART models with the word-level test tokenizer; the training texts are six of
the ten fixture sentences, so the other four hold words the trimmed vocabulary lacks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from datasets import Dataset
from transformers import (
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    pipeline,
)

from ckadistill.commands.distill import main
from ckadistill.config import DistillArguments, TaskTrainingArguments, parse_config
from ckadistill.losses import kl_logits_loss, token_level_terms
from ckadistill.runs import CONFIG_FILE
from ckadistill.teacher_cache import EXAMPLE_ID, TeacherCache
from ckadistill.trainer import DistillationTrainer, to_teacher_ids
from ckadistill.vocab import SLOW_TOKENIZER_FILES, teacher_token_ids, trim_student
from conftest import SENTENCES, SPECIAL_TOKENS, build_tokenizer
from test_distill_cli import TOPICS, assert_loads_cleanly, save_model, tiny_bert, write_csv
from test_seq2seq_cli import seq2seq_tokenizer, tiny_bart

pytestmark = pytest.mark.usefixtures("one_thread")

TRAIN, HELD_OUT = SENTENCES[:6], SENTENCES[6:]
TRAIN_WORDS = {w for s in TRAIN for w in s.split()}
LABELS = sorted(set(TOPICS))

FAST = [
    "--max_steps", "2", "--per_device_train_batch_size", "4", "--logging_steps", "1",
    "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
]  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("trim_data")
    train = [[s, t] for _ in range(2) for s, t in zip(TRAIN, TOPICS[:6], strict=True)]
    held = [[s, t] for s, t in zip(HELD_OUT, TOPICS[6:], strict=True)]
    return {
        "train": write_csv(root / "train.csv", ["text", "label"], train),
        "validation": write_csv(root / "validation.csv", ["text", "label"], held),
    }


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tok):
    return save_model(tiny_bert(tok, labels=LABELS), tok, tmp_path_factory.mktemp("trim_teacher"))


def classification_argv(teacher: Path, files: dict, out: Path, *extra: str) -> list[str]:
    return [
        "--teacher", str(teacher), "--train_file", str(files["train"]),
        "--validation_file", str(files["validation"]), "--output_dir", str(out), "--max_length", "24",
        "--student_layers", "2", "--student_hidden_size", "16", "--student_heads", "2", *FAST, *extra,
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------------
# Classification through the real entry point.
# ---------------------------------------------------------------------------------------------------


def test_classification_student_with_a_trimmed_vocabulary(teacher_dir, files, tok, tmp_path):
    out = tmp_path / "student"
    assert main(classification_argv(teacher_dir, files, out, "--trim_vocab", "true")) == 0

    # A plain HF classifier whose vocabulary is the special tokens and the training words.
    assert_loads_cleanly(out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    student_tok = AutoTokenizer.from_pretrained(out)
    expected = len(SPECIAL_TOKENS) + len(TRAIN_WORDS)
    assert model.config.vocab_size == len(student_tok) == expected < len(tok)
    assert set(student_tok.get_vocab()) == set(SPECIAL_TOKENS) | TRAIN_WORDS
    assert not any((out / name).exists() for name in SLOW_TOKENIZER_FILES)
    assert sorted(p.name for p in out.iterdir()) == [  # what an untrimmed run leaves, nothing more
        "README.md", "all_results.json", "ckadistill_config.yaml", "config.json", "layer_map.json",
        "model.safetensors", "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "training_args.bin",
    ]  # fmt: skip

    # The student's ids of a training text are, through the map, the teacher tokenizer's ids.
    ids = teacher_token_ids(student_tok, tok)
    for text in TRAIN:
        student_ids = torch.tensor(student_tok(text)["input_ids"])
        assert ids[student_ids].tolist() == tok(text)["input_ids"]
    (prediction,) = pipeline("text-classification", model=str(out))("the team won the match")
    assert prediction["label"] in LABELS

    # The trimming is recorded: config provenance, model card, resolved configuration.
    record = model.config.ckadistill["trim_vocab"]
    assert (record["old_vocab_size"], record["new_vocab_size"]) == (len(tok), expected)
    assert record["min_count"] == 1 and record["keep_top"] is None
    # Word-level: a validation word tokenises as before exactly when it is a training word.
    held_words = [w for s in HELD_OUT for w in s.split()]
    assert record["coverage_on"] == "validation texts"
    assert record["coverage"] == pytest.approx(sum(w in TRAIN_WORDS for w in held_words) / len(held_words))
    assert record["coverage"] < 1.0
    card = (out / "README.md").read_text()
    assert "## Vocabulary" in card and f"{len(tok):,} -> {expected:,} tokens" in card
    assert f"{record['coverage']:.2%}" in card
    saved = (out / CONFIG_FILE).read_text()
    assert f"# --trim_vocab: vocabulary {len(tok)} -> {expected} tokens" in saved
    assert yaml.safe_load(saved)["trim_vocab"] is True
    from test_seq2seq_cli import DISTILL_TYPES

    model_args = parse_config(DISTILL_TYPES, [str(out / CONFIG_FILE)], prog="test")[0]
    assert model_args.trim_vocab and model_args.trim_min_count == 1

    # The teacher was scored on its own tokenisation, beside the student.
    scores = json.loads((out / "all_results.json").read_text())
    assert {"eval_accuracy", "teacher_eval_accuracy"} <= set(scores)


def test_keep_top_caps_the_vocabulary(teacher_dir, files, tok, tmp_path):
    out = tmp_path / "student"
    cap = len(SPECIAL_TOKENS) + 5
    argv = classification_argv(teacher_dir, files, out, "--trim_vocab", "true", "--trim_keep_top", str(cap))
    assert main([*argv, "--cache_teacher", "true"]) == 0
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.vocab_size == cap
    assert model.config.ckadistill["trim_vocab"]["keep_top"] == cap


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (["--trim_keep_top", "20"], ["--trim_keep_top", "--trim_vocab true"]),
        (["--trim_min_count", "3"], ["--trim_min_count", "--trim_vocab true"]),
        (["--trim_vocab", "true", "--trim_min_count", "0"], ["--trim_min_count must be >= 1"]),
        (
            ["--trim_vocab", "true", "--trim_keep_top", "3"],
            ["--trim_keep_top 3 is below", "--trim_keep_top 7"],
        ),
        (["--trim_vocab", "true", "--task", "general"], ["--trim_vocab", "--task general"]),
    ],
)
def test_bad_trim_flags_are_refused_before_training(teacher_dir, files, tmp_path, capsys, extra, needles):
    out = tmp_path / "student"
    assert main(classification_argv(teacher_dir, files, out, *extra)) == 2
    err = capsys.readouterr().err
    assert all(needle in err for needle in needles), err
    assert not (out / "trainer_state.json").exists() and not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------
# The teacher reads the student's ids: a trimmed copy of the teacher is its perfect student.
# ---------------------------------------------------------------------------------------------------


def identity_pairs(layers: int) -> list[tuple[int, int]]:
    return [(i, i) for i in range(layers + 1)]


def assert_perfect_student(trainer, inputs) -> None:
    """One training-mode loss of a student that is the teacher itself: KL 0, every CKA 1."""
    trainer._log_sums, trainer._log_batches = {}, 0
    trainer.model.train()  # dropout is 0 in these models, so train mode is deterministic and records terms
    trainer.compute_loss(trainer.model, inputs)
    logged = {k: float(v) for k, v in trainer._log_sums.items()}
    assert logged["loss/kd"] == pytest.approx(0.0, abs=1e-5)
    ckas = [v for k, v in logged.items() if k.startswith("cka/")]
    assert ckas and all(v == pytest.approx(1.0, abs=1e-4) for v in ckas), logged


def test_teacher_reads_a_trimmed_classifier_through_the_map(tok, tmp_path):
    from test_trainer import quiet_bert

    teacher = quiet_bert(tok, layers=2).eval()
    student, student_tok, ids, _ = trim_student(copy.deepcopy(teacher), tok, TRAIN)
    labels = [0, 1, 2, 0, 1, 2]
    encoded = Dataset.from_dict({**student_tok(TRAIN), "labels": labels})
    args = TaskTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True, report_to="none")
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=encoded,
        data_collator=DataCollatorWithPadding(student_tok),
        teacher=teacher,
        distill_args=DistillArguments(cache_teacher=True),
        layer_pairs=identity_pairs(2),
        teacher_token_ids=ids,
    )
    rows = [trainer.train_dataset[i] for i in range(4)]  # with their EXAMPLE_ID, for the cache
    assert_perfect_student(trainer, trainer.data_collator(rows))  # read from the cache
    live = trainer.data_collator([{k: v for k, v in row.items() if k != EXAMPLE_ID} for row in rows])
    assert_perfect_student(trainer, live)  # the live teacher

    # The cache holds the teacher's outputs on its own ids, under the key of its own rows.
    teacher_rows = Dataset.from_dict({**tok(TRAIN), "labels": labels})
    plain_key = TeacherCache.key(teacher, teacher_rows, [0, 1, 2])
    assert TeacherCache.key(teacher, trainer.train_dataset, [0, 1, 2], token_ids=ids) == plain_key
    assert TeacherCache.key(teacher, trainer.train_dataset, [0, 1, 2]) != plain_key
    with torch.no_grad():
        expected = teacher(**tok(TRAIN, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(trainer.teacher_cache.logits(torch.arange(6)), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", [False, True])
def test_teacher_reads_a_trimmed_bart_through_the_map_and_kl_is_restricted(tmp_path, cache):
    tok = seq2seq_tokenizer()
    teacher = tiny_bart(layers=2).eval()
    student, student_tok, ids, _ = trim_student(copy.deepcopy(teacher), tok, TRAIN)
    sources = student_tok(TRAIN)
    targets = student_tok(text_target=[" ".join(s.split()[:4]) for s in TRAIN])["input_ids"]
    encoded = Dataset.from_dict({**sources, "labels": targets})
    args = TaskTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True, report_to="none")
    trainer = DistillationTrainer(
        model=student,
        args=args,
        train_dataset=encoded,
        data_collator=DataCollatorForSeq2Seq(student_tok, model=student),
        teacher=teacher,
        distill_args=DistillArguments(alpha_task=0.2, alpha_kd=0.8, kd_chunk_size=3, cache_teacher=cache),
        layer_pairs=identity_pairs(2),
        decoder_layer_pairs=identity_pairs(2),
        teacher_token_ids=ids,
    )
    # Restricted and renormalised, the teacher's distribution is the student's: KL 0 (not so unrestricted).
    # With the cache, the teacher's outputs were computed once on its own ids (the rows carry EXAMPLE_ID).
    rows = [trainer.train_dataset[i] for i in range(4)]
    assert (EXAMPLE_ID in rows[0]) == cache
    assert_perfect_student(trainer, trainer.data_collator(rows))
    assert float(trainer._log_sums["loss/task"]) > 0.5  # a random model, far from the labels

    # Generation can only emit the student's ids: its output layer has the kept rows only.
    student.eval()
    batch = student_tok(HELD_OUT, padding=True, return_tensors="pt")
    generated = student.generate(**batch, max_new_tokens=6, do_sample=True, top_k=0)
    assert student.get_output_embeddings().weight.shape[0] == len(student_tok) < len(tok)
    assert int(generated.max()) < len(student_tok)


def test_to_teacher_ids_keeps_ignored_labels():
    table = torch.tensor([0, 3, 5, 9])
    ids = torch.tensor([[1, 2, -100], [3, 0, -100]])
    assert to_teacher_ids(ids, table).tolist() == [[3, 5, -100], [9, 0, -100]]


# ---------------------------------------------------------------------------------------------------
# KL restricted to the kept ids, against a reference by hand.
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_restricted_kl_renormalises_the_teacher_over_the_kept_ids(reverse):
    torch.manual_seed(0)
    kept = torch.tensor([0, 2, 5, 6])
    student = torch.randn(2, 3, 4, requires_grad=True)  # (B, T, V_s)
    teacher = torch.randn(2, 3, 7)  # (B, T, V_t)
    labels = torch.tensor([[1, 2, -100], [0, 3, 1]])
    temperature = 2.0

    # By hand: the teacher's full distribution, cut to the kept ids and renormalised.
    p_full = torch.softmax(teacher / temperature, dim=-1)
    p_t = p_full[..., kept] / p_full[..., kept].sum(dim=-1, keepdim=True)
    p_s = torch.softmax(student.detach() / temperature, dim=-1)
    pointwise = (p_s * (p_s.log() - p_t.log())) if reverse else (p_t * (p_t.log() - p_s.log()))
    keep = labels != -100
    expected = pointwise.sum(-1)[keep].mean() * temperature**2

    values, grads = [], []
    for chunk in (None, 2):
        student.grad = None
        kl = kl_logits_loss(
            student,
            teacher,
            keep,
            temperature=temperature,
            reverse=reverse,
            chunk_size=chunk,
            teacher_vocab=kept,
        )
        kl.backward()
        values.append(kl.detach())
        grads.append(student.grad.clone())
    torch.testing.assert_close(values[0], expected)
    torch.testing.assert_close(values[1], expected)  # chunked: the same value and gradient
    torch.testing.assert_close(grads[0], grads[1])
    terms = token_level_terms(
        student, teacher, labels, temperature=temperature, reverse=reverse, teacher_vocab=kept
    )
    torch.testing.assert_close(terms["kd"], expected)
    torch.testing.assert_close(terms["task"], F.cross_entropy(student.reshape(-1, 4), labels.reshape(-1)))

    with pytest.raises(ValueError, match="one teacher column per student column"):
        kl_logits_loss(student, teacher, teacher_vocab=kept[:3])
    with pytest.raises(ValueError, match="differ"):
        kl_logits_loss(student, teacher)  # without the map the vocabularies must agree


# ---------------------------------------------------------------------------------------------------
# Seq2seq through the real entry point.
# ---------------------------------------------------------------------------------------------------


def test_bart_summarization_student_with_a_trimmed_vocabulary(tmp_path):
    tok = seq2seq_tokenizer()
    teacher = save_model(tiny_bart(), tok, tmp_path / "teacher")
    rows = [[s, " ".join(s.split()[:4])] for s in SENTENCES]
    train = write_csv(tmp_path / "train.csv", ["source", "target"], rows[:6] * 2)
    validation = write_csv(tmp_path / "validation.csv", ["source", "target"], rows[6:])
    out = tmp_path / "student"
    argv = [
        "--task", "summarization", "--teacher", str(teacher), "--train_file", str(train),
        "--validation_file", str(validation), "--output_dir", str(out), *FAST,
        "--max_source_length", "24", "--max_target_length", "16", "--max_new_tokens", "6",
        "--student_encoder_layers", "2", "--student_decoder_layers", "2", "--student_hidden_size", "16",
        "--alpha_task", "0.2", "--alpha_kd", "0.8", "--kd_chunk_size", "5", "--trim_vocab", "true",
    ]  # fmt: skip
    assert main(argv) == 0

    model, info = AutoModelForSeq2SeqLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    student_tok = AutoTokenizer.from_pretrained(out)
    assert model.config.vocab_size == len(student_tok) == len(SPECIAL_TOKENS) + len(TRAIN_WORDS)
    # The config's token ids were renumbered to the student's tokens.
    assert model.config.eos_token_id == student_tok.eos_token_id
    assert model.config.decoder_start_token_id == student_tok.eos_token_id
    assert model.config.pad_token_id == student_tok.pad_token_id
    generated = model.generate(**student_tok(HELD_OUT, padding=True, return_tensors="pt"), max_new_tokens=6)
    assert int(generated.max()) < len(student_tok)

    scores = json.loads((out / "all_results.json").read_text())
    assert {"eval_rouge2", "teacher_eval_rouge2"} <= set(scores)
    logged = [e for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(logged) == 2 and all(e["loss/kd"] >= 0 for e in logged)
    assert "## Vocabulary" in (out / "README.md").read_text()
    assert model.config.ckadistill["trim_vocab"]["coverage_on"] == "validation texts"


# ---------------------------------------------------------------------------------------------------
# The quickstart's flags and its CKA heatmap with a trimmed student.
# ---------------------------------------------------------------------------------------------------


def test_quickstart_trim_flags_reach_the_distillation(monkeypatch, tmp_path, capsys):
    import ckadistill.tasks.classification as classification
    from ckadistill.commands.quickstart import main as quickstart_main
    from ckadistill.commands.quickstart import parse
    from ckadistill.quickstart import distil_student

    argv = ["--trim_vocab", "true", "--trim_keep_top", "5000", "--cka_max_tokens", "1024"]
    task, args = parse([*argv, "--output_dir", str(tmp_path / "q")])
    assert task == "classification" and args.trim_vocab and args.trim_keep_top == 5000
    seen = []
    monkeypatch.setattr(
        classification,
        "run_distill",
        lambda model_args, data_args, distill_args, *rest: seen.append((model_args, distill_args)) or {},
    )
    splits = {split: tmp_path / f"{split}.csv" for split in ("train", "validation", "test")}
    distil_student(args, splits, tmp_path / "teacher", tmp_path / "student")
    ((model_args, distill_args),) = seen
    assert model_args.trim_vocab and model_args.trim_keep_top == 5000 and model_args.trim_min_count == 1
    assert distill_args.cka_max_tokens == 1024

    assert quickstart_main(["--trim_keep_top", "5000", "--output_dir", str(tmp_path / "q")]) == 2
    assert "--trim_vocab true" in capsys.readouterr().err


def test_quickstart_cka_map_feeds_the_teacher_its_own_ids(tok, tmp_path):
    from ckadistill.analysis import load_cka_csv
    from ckadistill.quickstart import cka_heatmap
    from test_trainer import quiet_bert

    teacher = quiet_bert(tok, layers=2).eval()
    student, student_tok, _, _ = trim_student(copy.deepcopy(teacher), tok, TRAIN)
    teacher_dir = save_model(teacher, tok, tmp_path / "teacher")
    student_dir = save_model(student, student_tok, tmp_path / "student")
    (student_dir / "layer_map.json").write_text(json.dumps({"pairs": identity_pairs(2)}), encoding="utf-8")
    cka_heatmap(teacher_dir, student_dir, SENTENCES, tmp_path / "report", 24)
    matrix = load_cka_csv(tmp_path / "report" / "cka.csv")
    # The student is the teacher with fewer rows: unseen words are [UNK] for both, the rest the same.
    assert matrix.shape == (3, 3)
    assert [matrix[i, i] for i in range(3)] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
