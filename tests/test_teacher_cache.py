"""Teacher outputs cached once and replayed: the same losses as running the teacher live."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch
from datasets import Dataset
from filelock import FileLock
from transformers import DataCollatorWithPadding

from ckadistill.config import ClassificationTrainingArguments, DistillArguments
from ckadistill.teacher_cache import EXAMPLE_ID, TeacherCache
from ckadistill.trainer import DistillationTrainer
from conftest import SENTENCES
from test_trainer import LABELS, PAIRS, quiet_bert

pytestmark = pytest.mark.usefixtures("one_thread")


def encoded(tokenizer) -> Dataset:
    rows = tokenizer(SENTENCES)  # unpadded: lengths differ, so padding must be handled
    labels = [i % len(LABELS) for i in range(len(SENTENCES))]
    return Dataset.from_dict(
        {"input_ids": rows["input_ids"], "attention_mask": rows["attention_mask"], "labels": labels}
    )


def trainer_for(
    tokenizer, tmp_path, *, cache: bool, level: str = "token", cache_dir=None, dataset=None, teacher_seed=0
) -> DistillationTrainer:
    args = ClassificationTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    return DistillationTrainer(
        model=quiet_bert(tokenizer, hidden=16, layers=2, seed=1),
        args=args,
        train_dataset=encoded(tokenizer) if dataset is None else dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
        teacher=quiet_bert(tokenizer, seed=teacher_seed),
        distill_args=DistillArguments(
            alpha_task=0.5,
            alpha_kd=1.0,
            alpha_hidden=1.0,
            cache_teacher=cache,
            hidden_level=level,
            cache_teacher_dir=None if cache_dir is None else str(cache_dir),
        ),
        layer_pairs=PAIRS,
    )


def test_cache_stores_real_tokens_of_the_mapped_layers(tokenizer, tmp_path):
    trainer = trainer_for(tokenizer, tmp_path, cache=True)
    cache = trainer.teacher_cache
    assert cache.layers == (0, 2, 4)
    real = sum(len(tokenizer(s)["input_ids"]) for s in SENTENCES)
    ids = torch.arange(len(SENTENCES))
    assert cache.num_tokens(ids) == real
    assert cache.hidden_rows(4, ids).shape == (real, 32)
    with torch.no_grad():
        enc = tokenizer(SENTENCES[3:4], return_tensors="pt")
        live = trainer.teacher(**enc, output_hidden_states=True)
    torch.testing.assert_close(cache.logits(torch.tensor([3])), live.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        cache.hidden_rows(2, torch.tensor([3])), live.hidden_states[2][0], atol=2e-3, rtol=2e-3
    )
    assert TeacherCache.estimate_bytes(real, len(SENTENCES), 32, 3, 3) == cache.nbytes


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_cached_loss_equals_live_loss(tokenizer, tmp_path, level):
    cached = trainer_for(tokenizer, tmp_path, cache=True, level=level)
    live = trainer_for(tokenizer, tmp_path, cache=False, level=level)
    rows = [cached.train_dataset[i] for i in (7, 2, 5, 0)]  # a shuffled batch
    batch = DataCollatorWithPadding(tokenizer)(rows)
    assert batch[EXAMPLE_ID].tolist() == [7, 2, 5, 0]
    assert_cached_loss_is_live(cached, live, batch)


def assert_cached_loss_is_live(cached: DistillationTrainer, live: DistillationTrainer, batch: dict) -> None:
    """One training-mode loss of each trainer on the same batch (the live one without the row ids): the
    same value, and the gradient reaches the student only."""
    cached.model.train()
    live.model.train()
    loss_cached = cached.compute_loss(cached.model, dict(batch))
    loss_live = live.compute_loss(live.model, {k: v for k, v in batch.items() if k != EXAMPLE_ID})
    torch.testing.assert_close(loss_cached, loss_live, atol=1e-3, rtol=1e-3)
    loss_cached.backward()
    assert all(p.grad is None for p in cached.teacher.parameters())


def test_cache_too_large_is_refused(tokenizer, tmp_path):
    args = ClassificationTrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    with pytest.raises(ValueError, match="--cache_teacher_max_gb"):
        DistillationTrainer(
            model=quiet_bert(tokenizer, hidden=16, layers=2, seed=1),
            args=args,
            train_dataset=encoded(tokenizer),
            data_collator=DataCollatorWithPadding(tokenizer),
            teacher=quiet_bert(tokenizer),
            distill_args=DistillArguments(cache_teacher=True, cache_teacher_max_gb=1e-9),
            layer_pairs=PAIRS,
        )


def test_cache_on_disk_is_reused_only_for_the_same_teacher_data_and_layers(tokenizer, tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    first = trainer_for(tokenizer, tmp_path, cache=True, cache_dir=folder).teacher_cache
    files = list(folder.glob("teacher-outputs-*.safetensors"))
    assert len(files) == 1 and not list(folder.glob("*.partial"))

    built = []
    real_build = TeacherCache.build.__func__

    def counting_build(cls, *args, **kwargs):
        built.append(1)
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(TeacherCache, "build", classmethod(counting_build))
    again = trainer_for(tokenizer, tmp_path, cache=True, cache_dir=folder).teacher_cache
    assert built == []  # read back, not recomputed
    ids = torch.arange(len(SENTENCES))
    assert torch.equal(again.logits(ids), first.logits(ids))
    assert torch.equal(again.hidden_rows(4, ids), first.hidden_rows(4, ids))

    # Another teacher, or other rows, get a file of their own.
    trainer_for(tokenizer, tmp_path, cache=True, cache_dir=folder, teacher_seed=5)
    fewer = encoded(tokenizer).select(range(6))
    trainer_for(tokenizer, tmp_path, cache=True, cache_dir=folder, dataset=fewer)
    assert built == [1, 1] and len(list(folder.glob("teacher-outputs-*.safetensors"))) == 3


def test_a_run_waits_for_the_file_another_run_is_writing(tokenizer, tmp_path, monkeypatch, caplog):
    """Runs sharing --cache_teacher_dir compute each file once: a run that finds the file's lock held
    waits for it, then reads the file rather than running the teacher again."""
    folder = tmp_path / "cache"
    first = trainer_for(tokenizer, tmp_path, cache=True, cache_dir=folder).teacher_cache
    (path,) = folder.glob("teacher-outputs-*.safetensors")
    aside = path.with_name("finished-elsewhere")
    path.rename(aside)  # as if another run were still computing it
    built = []
    monkeypatch.setattr(TeacherCache, "build", classmethod(lambda cls, *a, **k: built.append(1)))
    caplog.set_level(logging.INFO, logger="ckadistill.trainer")

    other_run = FileLock(f"{path}.lock")
    other_run.acquire()
    second: dict = {}
    thread = threading.Thread(
        target=lambda: second.update(
            cache=trainer_for(tokenizer, tmp_path, cache=True, cache_dir=folder).teacher_cache
        )
    )
    thread.start()
    deadline = time.monotonic() + 60
    while "waiting for it" not in caplog.text:
        assert time.monotonic() < deadline and thread.is_alive(), "the second run did not wait for the lock"
        time.sleep(0.05)
    aside.rename(path)  # the other run writes its file and lets go
    other_run.release()
    thread.join(60)

    assert built == []
    ids = torch.arange(len(SENTENCES))
    assert torch.equal(second["cache"].logits(ids), first.logits(ids))
    assert torch.equal(second["cache"].hidden_rows(4, ids), first.hidden_rows(4, ids))


def test_cache_dir_needs_the_cache():
    with pytest.raises(ValueError, match="--cache_teacher true"):
        DistillArguments(cache_teacher_dir="somewhere")
