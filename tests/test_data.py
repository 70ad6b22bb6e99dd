"""Data loading, label spaces, the low-label regime, tokenisation and the vocabulary check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import BertConfig

from ckadistill.config import DataArguments
from ckadistill.data import check_vocab_compatible, load_raw_splits
from ckadistill.tasks.classification_data import UNLABELLED, encode_splits, labelled_rows, resolve_label_space
from conftest import SENTENCES

LABELS = ["b", "a", "c", "a", "b", "c", "a", "b", "c", "a"]


def write_rows(path, rows: list[dict]):
    suffix = path.suffix
    if suffix in (".csv", ".tsv"):
        import pandas as pd

        pd.DataFrame(rows).to_csv(path, index=False, sep="\t" if suffix == ".tsv" else ",")
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pandas as pd

        pd.DataFrame(rows).to_parquet(path)
    return str(path)


def rows(n_repeat: int = 2, **extra) -> list[dict]:
    return [
        {"text": s, "label": lab, **extra}
        for _ in range(n_repeat)
        for s, lab in zip(SENTENCES, LABELS, strict=True)
    ]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_each_file_format_loads(tmp_path, suffix):
    path = write_rows(tmp_path / f"train{suffix}", rows())
    raw = load_raw_splits(DataArguments(train_file=path, validation_split_fraction=0.25))
    assert len(raw["train"]) == 15 and len(raw["validation"]) == 5
    assert set(raw["train"].column_names) >= {"text", "label"}


def test_held_out_fractions_and_seed(tmp_path):
    path = write_rows(tmp_path / "train.csv", rows(n_repeat=4))
    args = DataArguments(
        train_file=path, validation_split_fraction=0.1, test_split_fraction=0.2, split_seed=3
    )
    raw = load_raw_splits(args)
    assert (len(raw["train"]), len(raw["validation"]), len(raw["test"])) == (28, 4, 8)
    assert load_raw_splits(args)["test"]["text"] == raw["test"]["text"]


def test_separate_files_are_not_split(tmp_path):
    train = write_rows(tmp_path / "train.csv", rows())
    val = write_rows(tmp_path / "val.jsonl", rows(n_repeat=1))
    raw = load_raw_splits(DataArguments(train_file=train, validation_file=val))
    assert (len(raw["train"]), len(raw["validation"])) == (20, 10) and "test" not in raw


def test_missing_column_lists_available_columns(tmp_path):
    path = write_rows(tmp_path / "train.csv", rows())
    with pytest.raises(ValueError, match=r"'sentence' \(--text_column\).*available columns: text, label"):
        load_raw_splits(DataArguments(train_file=path, text_column="sentence"))
    with pytest.raises(ValueError, match="--text_pair_column"):
        load_raw_splits(DataArguments(train_file=path, text_pair_column="hypothesis"))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", "", "is empty"),
        ("blank.jsonl", "\n\n", "is empty"),
        ("header.csv", "text,label\n", "header but no data rows"),
    ],
)
def test_empty_files_are_reported(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=f"--train_file .*{message}"):
        load_raw_splits(DataArguments(train_file=str(tmp_path / name)))


def test_unsupported_suffix_and_no_data(tmp_path):
    (tmp_path / "train.txt").write_text("hello\n")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        load_raw_splits(DataArguments(train_file=str(tmp_path / "train.txt")))
    with pytest.raises(ValueError, match="no data given"):
        load_raw_splits(DataArguments())


def test_string_labels_are_sorted_ids(tmp_path):
    raw = load_raw_splits(DataArguments(train_file=write_rows(tmp_path / "t.csv", rows())))
    space = resolve_label_space(raw, DataArguments())
    assert space.task == "classification" and space.names == ("a", "b", "c")
    assert space.label2id == {"a": 0, "b": 1, "c": 2} and space.num_labels == 3


def test_teacher_label_names_are_followed(tmp_path):
    raw = load_raw_splits(DataArguments(train_file=write_rows(tmp_path / "t.csv", rows())))
    teacher = BertConfig(num_labels=3, id2label={0: "c", 1: "b", 2: "a"}, label2id={"c": 0, "b": 1, "a": 2})
    assert resolve_label_space(raw, DataArguments(), teacher).names == ("c", "b", "a")
    other = BertConfig(num_labels=3, id2label={0: "x", 1: "b", 2: "a"}, label2id={"x": 0, "b": 1, "a": 2})
    with pytest.raises(ValueError, match=r"labels \['c'\].*not among the model's labels"):
        resolve_label_space(raw, DataArguments(), other)
    with pytest.raises(ValueError, match="3 classes but the model has 4 outputs"):
        resolve_label_space(raw, DataArguments(), BertConfig(num_labels=4))


def test_integer_and_float_labels(tmp_path):
    ints = [{"text": s, "label": i % 3} for i, s in enumerate(SENTENCES)]
    raw = load_raw_splits(
        DataArguments(train_file=write_rows(tmp_path / "i.csv", ints), validation_split_fraction=0)
    )
    assert resolve_label_space(raw, DataArguments()).names == ("0", "1", "2")
    negative = [{"text": s, "label": i % 3 - 1} for i, s in enumerate(SENTENCES)]
    raw = load_raw_splits(DataArguments(train_file=write_rows(tmp_path / "n.csv", negative)))
    with pytest.raises(ValueError, match="must be class ids >= 0"):
        resolve_label_space(raw, DataArguments())
    floats = [{"text": s, "label": i / 4} for i, s in enumerate(SENTENCES)]
    raw = load_raw_splits(DataArguments(train_file=write_rows(tmp_path / "f.csv", floats)))
    space = resolve_label_space(raw, DataArguments())
    assert space.task == "regression" and space.num_labels == 1
    assert space.model_config_kwargs() == {"num_labels": 1, "problem_type": "regression"}


def test_labelled_rows_are_stratified_and_seeded():
    labels = np.array([0] * 50 + [1] * 30 + [2] * 20)
    keep = labelled_rows(labels, 0.1, seed=0)
    assert [int(keep[labels == c].sum()) for c in range(3)] == [5, 3, 2]
    assert np.array_equal(keep, labelled_rows(labels, 0.1, seed=0))
    assert not np.array_equal(keep, labelled_rows(labels, 0.1, seed=1))
    # A class too small for the fraction still keeps one label.
    assert labelled_rows(np.array([0] * 99 + [1]), 0.1, seed=0)[-1]


def test_encode_keeps_or_drops_unlabelled_rows(tmp_path, tokenizer):
    args = DataArguments(train_file=write_rows(tmp_path / "t.csv", rows(n_repeat=4)), labelled_fraction=0.25)
    raw = load_raw_splits(args)
    space = resolve_label_space(raw, args)
    kept = encode_splits(raw, args, tokenizer, space, unlabelled="keep")
    labels = np.array(kept["train"]["labels"])
    assert len(labels) == len(raw["train"]) and 0 < (labels == UNLABELLED).sum() < len(labels)
    assert UNLABELLED not in kept["validation"]["labels"]  # evaluation keeps every label
    dropped = encode_splits(raw, args, tokenizer, space, unlabelled="drop")
    assert len(dropped["train"]) == int((labels != UNLABELLED).sum())
    assert UNLABELLED not in dropped["train"]["labels"]


def test_encode_tokenises_pairs_and_caps_samples(tmp_path):
    from conftest import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]  # as BERT's tokenizer
    pairs = [
        {"premise": s, "hypothesis": SENTENCES[-1 - i], "label": LABELS[i]} for i, s in enumerate(SENTENCES)
    ]
    args = DataArguments(
        train_file=write_rows(tmp_path / "p.jsonl", pairs * 2),
        text_column="premise",
        text_pair_column="hypothesis",
        max_train_samples=5,
        max_eval_samples=2,
        max_length=12,
    )
    raw = load_raw_splits(args)
    encoded = encode_splits(raw, args, tokenizer, resolve_label_space(raw, args))
    assert (len(encoded["train"]), len(encoded["validation"])) == (5, 2)
    first = encoded["train"][0]
    assert set(first) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert len(first["input_ids"]) <= 12 and 1 in first["token_type_ids"]  # the second text is segment 1
    sep = tokenizer.convert_tokens_to_ids("[SEP]")
    assert first["input_ids"].count(sep) == 2


def test_train_windows_cut_long_training_texts_into_labelled_windows(tmp_path, tokenizer):
    long, short = " ".join(SENTENCES), SENTENCES[0]
    train = [{"text": long, "label": "a"}, {"text": short, "label": "b"}, {"text": long, "label": "c"}]
    args = DataArguments(
        train_file=write_rows(tmp_path / "t.csv", train),
        validation_file=write_rows(tmp_path / "v.csv", train),
        max_length=12,
        train_windows=3,
    )
    raw = load_raw_splits(args)
    space = resolve_label_space(raw, args)
    encoded = encode_splits(raw, args, tokenizer, space)

    whole = tokenizer(long, add_special_tokens=False)["input_ids"]
    assert len(whole) > 3 * 10  # the long text has more than three windows of 10 tokens
    ids = space.label2id
    assert encoded["train"]["labels"] == [ids["a"]] * 3 + [ids["b"]] + [ids["c"]] * 3
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    windows = encoded["train"]["input_ids"][:3]
    assert all(len(w) == 12 and w[0] == cls and w[-1] == sep for w in windows)
    assert [t for w in windows for t in w[1:-1]] == whole[:30]  # consecutive, nothing skipped or repeated
    assert encoded["train"]["input_ids"][3] == tokenizer(short)["input_ids"]
    # Evaluation reads the first window only, as inference does.
    first = tokenizer([long, short, long], truncation=True, max_length=12)["input_ids"]
    assert encoded["validation"]["input_ids"] == first
    assert encoded["train"]["input_ids"][4] == first[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"train_windows": 0}, "--train_windows must be at least 1"),
        ({"train_windows": 2, "text_pair_column": "hypothesis"}, "drop --train_windows"),
        ({"train_windows": 2, "task": "translation"}, "drop it for --task translation"),
    ],
)
def test_train_windows_refuses_what_it_cannot_split(extra, message):
    with pytest.raises(ValueError, match=message):
        DataArguments(**extra)


def test_vocabulary_check(tokenizer):
    same = BertConfig(vocab_size=len(tokenizer))
    check_vocab_compatible(same, same, tokenizer, tokenizer_name="tiny")  # no error
    with pytest.raises(
        ValueError, match=rf"teacher vocab_size {len(tokenizer)}, student vocab_size 30.*tokenizer tiny"
    ):
        check_vocab_compatible(same, BertConfig(vocab_size=30), tokenizer, tokenizer_name="tiny")
    small = BertConfig(vocab_size=10)
    with pytest.raises(
        ValueError, match=f"tokenizer tiny has {len(tokenizer)} tokens but the models' vocab_size is 10"
    ):
        check_vocab_compatible(small, small, tokenizer, tokenizer_name="tiny")
