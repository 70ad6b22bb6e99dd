"""Typed entry points for sequence classification: fine-tune a teacher, distil a student, evaluate models.

Each reads top to bottom in phases (data -> models -> trainer -> train -> evaluate -> save) and takes
the config dataclasses of `ckadistill.config`, so scripts and benchmarks call them directly:

    metrics = run_distill(DistillModelArguments(teacher="t", student_layers=2), DataArguments(train_file=...),
                          DistillArguments(), ClassificationTrainingArguments(output_dir="out"))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, set_seed

from ckadistill.config import (
    ClassificationTrainingArguments,
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
)
from ckadistill.data import check_vocab_compatible, load_raw_splits
from ckadistill.distributed import whole_models
from ckadistill.metrics import count_parameters, measure_throughput
from ckadistill.model_card import write_model_card
from ckadistill.runs import (
    check_eval_setup,
    check_output_dir,
    resume_target,
    save_run_files,
    training_summary,
)
from ckadistill.tasks.classification_data import (
    LabelSpace,
    encode_splits,
    has_named_labels,
    resolve_label_space,
    sample_texts,
    split_texts,
)
from ckadistill.tasks.classification_metrics import build_compute_metrics, task_metrics

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# Shared steps.
# ---------------------------------------------------------------------------------------------------


def _evaluate_splits(trainer, encoded) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split in encoded:
            metrics.update(trainer.evaluate(encoded[split], metric_key_prefix=prefix))
    return metrics


def _data_summary(data_args: DataArguments, encoded) -> dict[str, Any]:
    return {
        "dataset": data_args.dataset_name,
        "train file": data_args.train_file,
        "validation file": data_args.validation_file,
        "test file": data_args.test_file,
        "text column": data_args.text_column,
        "text pair column": data_args.text_pair_column,
        "label column": data_args.label_column,
        "rows": ", ".join(f"{split} {len(ds):,}" for split, ds in encoded.items()),
        "labelled fraction of train": data_args.labelled_fraction,
        "windows per training text (at most)": data_args.train_windows
        if data_args.train_windows > 1
        else None,
        "unlabelled perturbed copies per training text": data_args.augment or None,
        "max length": data_args.max_length,
    }


def freeze_bottom_layers(model, num_layers: int) -> int:
    """Fix the embeddings and the first `num_layers` encoder layers of a classifier; returns how many
    parameters were frozen. Layers are found through the family table (`ckadistill.families`)."""
    from ckadistill.families import get_family, num_encoder_layers

    family = get_family(model.config)
    depth = num_encoder_layers(model.config)
    if family.is_encoder_decoder or not 1 <= num_layers < depth:
        raise ValueError(
            f"--freeze_layers {num_layers}: a {model.config.model_type} classifier with {depth} encoder layers "
            f"can freeze between 1 and {depth - 1} of them (encoder-only families), or 0 to train everything"
        )
    frozen = 0
    for name, param in model.named_parameters():
        where = family.locate(name)
        embedding = where is None and ".embeddings." in f".{name}"  # BERT-like: <base>.embeddings.*
        if embedding or (where is not None and where[0] == 0 and where[1] < num_layers):
            param.requires_grad_(False)
            frozen += param.numel()
    logger.info("Froze the embeddings and layers 1-%d: %d parameters", num_layers, frozen)
    return frozen


@torch.no_grad()
def predict(model, dataset, collator, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Logits `(N, C)` and labels `(N,)` of a tokenised dataset, in order, on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    logits, labels = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collator(dataset.select(range(start, min(start + batch_size, len(dataset)))).to_list())
        labels.append(batch.pop("labels").numpy())
        logits.append(model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy())
    return np.concatenate(logits), np.concatenate(labels)


# ---------------------------------------------------------------------------------------------------
# Fine-tuning a teacher.
# ---------------------------------------------------------------------------------------------------


def run_finetune(
    model_args: FinetuneModelArguments,
    data_args: DataArguments,
    training_args: ClassificationTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, float]:
    """Fine-tune a base model or checkpoint into a classification (or regression) teacher.

    Saves model, tokenizer, resolved config and model card in `--output_dir`; returns the Trainer's
    train / eval / test metrics. Training rows outside `--labelled_fraction` are dropped. `callbacks`
    are added to the Trainer's (e.g. progress estimates).
    """
    from transformers import (
        AutoConfig,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
    )

    check_output_dir(training_args)
    set_seed(training_args.seed)  # before any model is built: new heads start the same every run

    from ckadistill.packaged import packaged_model_path

    # Data and labels (from the data: the model's head is new).
    name = packaged_model_path(model_args.model_name_or_path)  # the hub's MiniLM: the packaged copy
    tokenizer_name = packaged_model_path(model_args.tokenizer_name or name)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    raw = load_raw_splits(data_args)
    labels = resolve_label_space(raw, data_args)

    # Model with a head sized for these labels.
    config = AutoConfig.from_pretrained(name, **labels.model_config_kwargs())
    model = AutoModelForSequenceClassification.from_pretrained(
        name, config=config, ignore_mismatched_sizes=True
    )
    if len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_name} has {len(tokenizer)} tokens but {name} has vocab_size {config.vocab_size}; "
            "pass the model's own tokenizer (--tokenizer_name)"
        )
    if model_args.fresh_lr_multiplier != 1.0:
        raise ValueError("--fresh_lr_multiplier applies to seq2seq teachers (e.g. bert2bert); drop it here")
    if model_args.freeze_layers:
        freeze_bottom_layers(model, model_args.freeze_layers)
    encoded = encode_splits(raw, data_args, tokenizer, labels, unlabelled="drop")
    check_eval_setup(encoded, training_args)

    # Train, evaluate, save.
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=build_compute_metrics(labels.task),
        callbacks=list(callbacks),
    )
    result = trainer.train(
        resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    metrics = {**result.metrics, **_evaluate_splits(trainer, encoded)}
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        save_run_files(
            trainer, output_dir, metrics, (model_args, data_args, training_args), header="ckadistill finetune"
        )
        write_model_card(
            output_dir,
            model=model,
            title=f"{Path(model_args.model_name_or_path).name} fine-tuned for classification",
            summary=f"`{model_args.model_name_or_path}` fine-tuned with ckadistill on {data_args.train_file or data_args.dataset_name}.",
            metrics=metrics,
            labels=labels.names,
            data=_data_summary(data_args, encoded),
            training=training_summary(training_args, trainer),
        )
    return metrics


# ---------------------------------------------------------------------------------------------------
# Distilling a student.
# ---------------------------------------------------------------------------------------------------


def _load_student(
    model_args: DistillModelArguments, teacher, labels: LabelSpace, tokenizer, raw, data_args, seed: int
):
    """An existing student directory, or a student built from the teacher (`make_student`).

    An existing student gets the teacher's head: its own when the labels agree, a new one when it
    is a pretrained encoder without task labels.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    if model_args.student is not None:
        config = AutoConfig.from_pretrained(model_args.student)
        if has_named_labels(config) and config.id2label != teacher.config.id2label:
            raise ValueError(
                f"--student {model_args.student} has labels {config.id2label} but the teacher has "
                f"{teacher.config.id2label}: a student needs the teacher's label set"
            )
        student = AutoModelForSequenceClassification.from_pretrained(
            model_args.student, **labels.model_config_kwargs(), ignore_mismatched_sizes=True
        )
        # A student from an earlier stage (`--task general`) keeps that stage's provenance, nested.
        earlier = getattr(student.config, "ckadistill", None)
        student.config.ckadistill = {
            "stage": "task",
            "started_from": model_args.student,
            **({"earlier_stage": earlier} if earlier else {}),
        }
        student_dir = Path(model_args.student)
        has_tokenizer = (student_dir / "tokenizer.json").is_file() or (
            student_dir / "tokenizer_config.json"
        ).is_file()
        student_tokenizer = AutoTokenizer.from_pretrained(model_args.student) if has_tokenizer else None
        return student, student_tokenizer
    from ckadistill.students import student_from_args

    student = student_from_args(
        teacher, model_args, init_texts=sample_texts(raw, data_args), tokenizer=tokenizer, seed=seed
    )
    return student, None


def _distillation_summary(distill_args: DistillArguments, pairs: Sequence[tuple[int, int]]) -> dict[str, Any]:
    from ckadistill.layer_maps import format_layer_map

    terms = [f"{distill_args.alpha_task}·task", f"{distill_args.alpha_kd}·KD(T={distill_args.temperature})"]
    if distill_args.uses_hidden:
        terms.append(
            f"{distill_args.alpha_hidden}·{distill_args.hidden_reduction}_pairs {distill_args.hidden_loss}"
        )
    return {
        "loss": " + ".join(terms),
        "hidden loss": distill_args.hidden_loss + (" (1 - sqrt(CKA))" if distill_args.cka_sqrt else ""),
        "layer map (student:teacher)": f"{distill_args.layer_map} -> {format_layer_map(list(pairs))}",
        "pair reduction": distill_args.hidden_reduction,
        "hidden level": distill_args.hidden_level,
        "hidden weight schedule": distill_args.hidden_schedule,
        "reverse KL": distill_args.kd_reverse,
    }


def run_distill(
    model_args: DistillModelArguments,
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: ClassificationTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, float]:
    """Distil a classification teacher into a smaller student of the same family.

    Writes to `--output_dir`: the student (`save_pretrained`) and tokenizer, `ckadistill_config.yaml`,
    `layer_map.json`, `all_results.json`, the model card `README.md`, and the Trainer's checkpoints.

    Returns:
        Flat metrics: `train_*`, `eval_*` (validation), `test_*`, and the teacher's scores on the same
        splits as `teacher_eval_*` / `teacher_test_*`.
    """
    from datasets import DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    check_output_dir(training_args)
    set_seed(training_args.seed)  # before any model is built: new heads start the same every run

    from ckadistill.layer_maps import format_layer_map, layer_map_for
    from ckadistill.trainer import DistillationTrainer
    from ckadistill.vocab import check_trim_setup, trim_line, trim_student

    # Teacher, tokenizer, data: the teacher's labels define the task.
    tokenizer_name = model_args.tokenizer_name or model_args.teacher
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    with whole_models():  # replicated on every process, even under ZeRO-3 (see ckadistill.distributed)
        teacher = AutoModelForSequenceClassification.from_pretrained(model_args.teacher)
    if model_args.trim_vocab:
        check_trim_setup(tokenizer, teacher, model_args.trim_keep_top)
    raw = load_raw_splits(data_args)
    labels: LabelSpace = resolve_label_space(raw, data_args, teacher.config)

    # Student, checked against the teacher before any training.
    with whole_models():  # cut from the whole teacher; DeepSpeed / FSDP shard it when the Trainer wraps it
        student, student_tokenizer = _load_student(
            model_args, teacher, labels, tokenizer, raw, data_args, training_args.seed
        )
    check_vocab_compatible(
        teacher.config,
        student.config,
        tokenizer,
        tokenizer_name=tokenizer_name,
        student_tokenizer=student_tokenizer,
    )
    pairs = list(layer_map_for(teacher.config, student.config, encoder=distill_args.layer_map).encoder)
    logger.info("Layer map (student:teacher): %s", format_layer_map(pairs))

    # --trim_vocab: the student keeps the vocabulary of the training texts, and the data is tokenised
    # with its trimmed tokenizer (what it will read at inference); the teacher reads the same tokens
    # through `teacher_ids`, student id -> teacher id.
    data_tokenizer, teacher_ids, trim_info = tokenizer, None, None
    if model_args.trim_vocab:
        heldout = split_texts(raw, data_args, "validation") if "validation" in raw else None
        student, data_tokenizer, teacher_ids, trim_info = trim_student(
            student,
            tokenizer,
            split_texts(raw, data_args, "train"),
            min_count=model_args.trim_min_count,
            keep_top=model_args.trim_keep_top,
            heldout=heldout,
        )

    encoded = encode_splits(raw, data_args, data_tokenizer, labels, unlabelled="keep")
    if data_args.augment:
        from ckadistill.augment import augment_dataset

        encoded["train"] = augment_dataset(
            encoded["train"],
            data_args.augment,
            data_tokenizer,
            rate=data_args.augment_rate,
            ops=data_args.augment_op_names,
            seed=data_args.split_seed,
        )
    check_eval_setup(encoded, training_args)
    collator = DataCollatorWithPadding(data_tokenizer)

    # Train.
    trainer = DistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded.get("validation"),
        processing_class=data_tokenizer,  # saved with the student
        data_collator=collator,
        compute_metrics=build_compute_metrics(labels.task),
        teacher=teacher,
        distill_args=distill_args,
        layer_pairs=pairs,
        teacher_token_ids=teacher_ids,
        callbacks=list(callbacks),
    )
    result = trainer.train(
        resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint, training_args.output_dir)
    )

    # Evaluate student and teacher on the same splits (the teacher on its own tokenisation).
    metrics = {**result.metrics, **_evaluate_splits(trainer, encoded)}
    teacher_encoded, teacher_collator = encoded, collator
    if teacher_ids is not None:
        held_out = DatasetDict({split: raw[split] for split in ("validation", "test") if split in raw})
        teacher_encoded = encode_splits(held_out, data_args, tokenizer, labels) if held_out else {}
        teacher_collator = DataCollatorWithPadding(tokenizer)
    for split, prefix in (("validation", "eval"), ("test", "test")):
        if split in teacher_encoded:
            logits, gold = predict(
                teacher,
                teacher_encoded[split],
                teacher_collator,
                batch_size=training_args.per_device_eval_batch_size,
            )
            metrics.update(
                {f"teacher_{prefix}_{k}": v for k, v in task_metrics(labels.task, logits, gold).items()}
            )

    # Save the student, its tokenizer, the resolved config, the layer map and the model card.
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        save_run_files(
            trainer,
            output_dir,
            metrics,
            (model_args, data_args, distill_args, training_args),
            header="ckadistill distill" + (f"\n{trim_line(trim_info)}" if trim_info else ""),
            layer_map=(distill_args.layer_map, pairs),
        )
        compression = count_parameters(teacher) / count_parameters(student)
        write_model_card(
            output_dir,
            model=trainer.model,
            title=f"Student distilled from {Path(model_args.teacher).name}",
            summary=(
                f"A {compression:.1f}× smaller student of `{model_args.teacher}`, distilled with ckadistill "
                f"({distill_args.hidden_loss} hidden-state matching) on "
                f"{data_args.train_file or data_args.dataset_name}."
            ),
            metrics=metrics,
            labels=labels.names,
            data=_data_summary(data_args, encoded),
            training=training_summary(training_args, trainer),
            teacher=teacher,
            teacher_name=model_args.teacher,
            distillation=_distillation_summary(distill_args, pairs),
            vocabulary=trim_info,
        )
    return metrics


# ---------------------------------------------------------------------------------------------------
# Evaluating saved models side by side.
# ---------------------------------------------------------------------------------------------------


def evaluate_models(
    model_dirs: Sequence[str],
    data_args: DataArguments,
    *,
    split: str = "test",
    batch_size: int = 32,
    speed_examples: int = 64,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Metrics, size and speed of saved classifiers on one data split, one row per model.

    Speed is examples per second at batch 1 and at batch 32 over the same first `speed_examples`
    examples, after untimed warm-up batches; `torch_threads` records the CPU threads used.

    Returns:
        Rows with `name`, `path`, `parameters`, the task metrics (`accuracy`, `macro_f1`, `matthews`
        or `pearson`, `spearman`, `mse`), `examples_per_second_bs1`, `examples_per_second_bs32`,
        `examples`, `speed_examples`, `torch_threads`, `device`.
    """
    from datasets import DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    if not model_dirs:
        raise ValueError("give at least one model directory to evaluate")
    raw = load_raw_splits(data_args, require_train=False)
    if split not in raw:
        raise ValueError(f"--split {split} is not in the data; available splits: {', '.join(raw)}")
    raw = DatasetDict({split: raw[split]})
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for model_dir in model_dirs:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir).to(device).eval()
        labels = resolve_label_space(raw, data_args, model.config)
        dataset = encode_splits(raw, data_args, tokenizer, labels)[split]
        collator = DataCollatorWithPadding(tokenizer)
        logits, gold = predict(model, dataset, collator, batch_size=batch_size)

        sample = dataset.select(range(min(speed_examples, len(dataset)))).remove_columns("labels").to_list()
        speed = {}
        for bs in (1, 32):
            batches = [collator(sample[i : i + bs]) for i in range(0, len(sample), bs)]
            speed[f"examples_per_second_bs{bs}"] = measure_throughput(
                model, batches, warmup=min(2, len(batches))
            )
        rows.append(
            {
                "name": Path(model_dir).name,
                "path": str(model_dir),
                "parameters": count_parameters(model),
                **task_metrics(labels.task, logits, gold),
                **speed,
                "examples": len(dataset),
                "speed_examples": len(sample),
                "torch_threads": torch.get_num_threads(),
                "device": device,
            }
        )
        logger.info("Evaluated %s: %s", model_dir, rows[-1])
    return rows
