"""`--augment N`: unlabelled, perturbed copies of the training texts, supervised by the teacher only."""

from __future__ import annotations

import random

import pytest
from datasets import Dataset

from ckadistill.augment import augment_dataset, perturb
from ckadistill.commands.distill import main
from ckadistill.config import DataArguments
from conftest import SENTENCES
from test_distill_cli import FAST, TOPICS, save_model, tiny_bert, topic_rows, write_csv

pytestmark = pytest.mark.usefixtures("one_thread")


def encoded(tokenizer, pairs: bool = False) -> Dataset:
    texts = list(SENTENCES)
    enc = tokenizer(texts, list(reversed(texts)) if pairs else None, return_token_type_ids=pairs)
    return Dataset.from_dict({**enc, "labels": list(range(len(texts)))})


def test_each_perturbation_keeps_special_tokens_and_alignment(tokenizer):
    rng = random.Random(0)
    special = set(tokenizer.all_special_ids)
    row = {key: value[0] for key, value in encoded(tokenizer, pairs=True)[:1].items()}
    ordinary = [t for t in row["input_ids"] if t not in special]
    pool = [9999]
    masked = perturb(row, "mask", rng, special=special, mask_id=tokenizer.mask_token_id, pool=pool, rate=0.2)
    assert masked["input_ids"].count(tokenizer.mask_token_id) == round(0.2 * len(ordinary))
    replaced = perturb(
        row, "replace", rng, special=special, mask_id=tokenizer.mask_token_id, pool=pool, rate=0.2
    )
    assert replaced["input_ids"].count(9999) == round(0.2 * len(ordinary))
    deleted = perturb(
        row, "delete", rng, special=special, mask_id=tokenizer.mask_token_id, pool=pool, rate=0.2
    )
    assert len(deleted["input_ids"]) == len(row["input_ids"]) - round(0.2 * len(ordinary))
    frame = special - {tokenizer.mask_token_id}
    for copy in (masked, replaced, deleted):
        assert [t for t in copy["input_ids"] if t in frame] == [t for t in row["input_ids"] if t in frame]
        assert len(copy["input_ids"]) == len(copy["attention_mask"]) == len(copy["token_type_ids"])
        assert copy["labels"] == row["labels"]  # perturb leaves labels to its caller
    # the second text of the pair keeps its segment id wherever a span was deleted
    kept_types = [
        ty for t, ty in zip(deleted["input_ids"], deleted["token_type_ids"], strict=True) if t in special
    ]
    assert kept_types == [0, 0, 1]


def test_augment_dataset_adds_unlabelled_copies_deterministically(tokenizer):
    train = encoded(tokenizer)
    augmented = augment_dataset(train, 3, tokenizer, seed=1)
    assert len(augmented) == 4 * len(train)
    assert augmented[: len(train)] == train[:]  # the originals come first, unchanged
    copies = augmented.select(range(len(train), len(augmented)))
    assert set(copies["labels"]) == {-100}  # only the teacher supervises a copy
    for k, copy in enumerate(copies):
        assert copy["input_ids"] != train[k // 3]["input_ids"]  # every copy is perturbed
    assert augment_dataset(train, 3, tokenizer, seed=1)[:] == augmented[:]
    assert augment_dataset(train, 3, tokenizer, seed=2)[:] != augmented[:]
    words = {t for ids in train["input_ids"] for t in ids}
    assert {t for ids in copies["input_ids"] for t in ids} <= words | {tokenizer.mask_token_id}  # in-domain
    assert augment_dataset(train, 0, tokenizer) is train
    only_deletions = augment_dataset(train, 1, tokenizer, ops=["delete"])
    assert all(
        len(c) < len(o)
        for c, o in zip(only_deletions["input_ids"][len(train) :], train["input_ids"], strict=True)
    )


def test_augment_flags_are_checked():
    with pytest.raises(ValueError, match="--augment must be >= 0"):
        DataArguments(augment=-1)
    with pytest.raises(ValueError, match="--augment perturbs classification texts"):
        DataArguments(task="summarization", augment=2)
    with pytest.raises(ValueError, match="--augment_ops must list some of mask, replace, delete"):
        DataArguments(augment=2, augment_ops="mask,shuffle")


def test_distill_with_augment_and_a_cached_teacher(tmp_path, tokenizer):
    teacher = save_model(tiny_bert(tokenizer, labels=sorted(set(TOPICS))), tokenizer, tmp_path / "teacher")
    data = write_csv(tmp_path / "train.csv", ["text", "label"], topic_rows(repeat=1))
    out = tmp_path / "student"
    args = [
        "--teacher",
        str(teacher),
        "--train_file",
        str(data),
        "--output_dir",
        str(out),
        "--student_layers",
        "1",
    ]
    args += ["--augment", "2", "--cache_teacher", "true", "--validation_split_fraction", "0.2", *FAST]
    assert main(args) == 0
    card = (out / "README.md").read_text()
    assert "rows: `train 24, validation 2`" in card  # 8 training texts + 16 copies
    assert "unlabelled perturbed copies per training text: `2`" in card
