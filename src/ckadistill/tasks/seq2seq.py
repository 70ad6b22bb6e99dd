"""Typed entry points for summarisation and translation: fine-tune a teacher, distil a student.

The encoder-decoder counterparts of `ckadistill.tasks.classification` (side-by-side evaluation of saved
models is in `ckadistill.tasks.seq2seq_evaluate`), in the same phases (models -> data ->
trainer -> train -> score -> save), with the seq2seq details of the transformers `run_summarization` /
`run_translation` examples (T5 prefixes, language codes, forced BOS):

    metrics = run_distill(
        DistillModelArguments(teacher="t", student_encoder_layers=3, student_decoder_layers=3),
        DataArguments(task="summarization", train_file="train.csv"),
        DistillArguments(alpha_task=0.2, alpha_kd=0.8),
        TaskTrainingArguments(output_dir="out"),
        GenerationArguments(num_beams=4),
    )

The final scores come from `generate()` over the whole validation and test splits, scored against the
raw reference texts (ROUGE for summarisation, BLEU/chrF for translation), for the student and the
teacher alike. During training, `--predict_with_generate true` scores the first
`--eval_generation_samples` validation rows against the tokenised targets instead (cheap epochs).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, set_seed

from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
    GenerationArguments,
    TaskTrainingArguments,
)
from ckadistill.data import check_vocab_compatible, load_raw_splits
from ckadistill.distributed import whole_models
from ckadistill.metrics import count_parameters
from ckadistill.model_card import write_model_card
from ckadistill.runs import (
    check_eval_setup,
    check_output_dir,
    resume_target,
    save_run_files,
    training_summary,
)
from ckadistill.tasks.seq2seq_data import (
    encode_seq2seq_splits,
    forced_bos_token_id,
    prepare_tokenizer,
    seq2seq_texts,
)
from ckadistill.tasks.seq2seq_metrics import build_generation_compute_metrics, generate, task_scores

logger = logging.getLogger(__name__)

SPLITS = (("validation", "eval"), ("test", "test"))  # data split -> metric prefix


# ---------------------------------------------------------------------------------------------------
# Shared steps.
# ---------------------------------------------------------------------------------------------------


def load_seq2seq_model(path: str, *, flag: str, task: str):
    """An `AutoModelForSeq2SeqLM`, after checking from its config that it is an encoder-decoder.

    Raises:
        ValueError: a classifier or decoder-only model, naming `--task` and `flag`.
    """
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    config = AutoConfig.from_pretrained(path)
    if not config.is_encoder_decoder:
        kind = ", ".join(config.architectures or []) or config.model_type
        raise ValueError(
            f"--task {task} needs an encoder-decoder model, but {flag} {path} is a {kind} model: pass a "
            "sequence-to-sequence model (BART, mBART, T5, Marian, bert2bert), or --task classification "
            "for a classifier"
        )
    if config.model_type == "encoder-decoder":
        # EncoderDecoderModel warns on every forward pass with labels about a change made in transformers
        # 4.12; it concerns checkpoints trained before then and says nothing about this run.
        warnings.filterwarnings("ignore", message="Version v4.12.0 introduces", category=FutureWarning)
    return AutoModelForSeq2SeqLM.from_pretrained(path)


def _vocab_config(config):
    """The config holding the vocabulary size: a bert2bert model's decoder (its output vocabulary), else its own."""
    return config.decoder if config.model_type == "encoder-decoder" else config


def _set_forced_bos(model, token_id: int | None) -> None:
    """mBART-50 / M2M100 / NLLB: every generation starts with the target language code."""
    if token_id is not None and model.generation_config.forced_bos_token_id != token_id:
        model.generation_config.forced_bos_token_id = token_id


def _prepare_generation(training_args: TaskTrainingArguments, generation_args: GenerationArguments) -> None:
    """With `--predict_with_generate`, evaluation during training decodes as the final scores do.

    As in the transformers `run_summarization` example, unset `--generation_num_beams` and
    `--generation_max_length` default to `--num_beams` and `--max_new_tokens` (+1 for the decoder
    start token); the resolved values are saved with the config.
    """
    if not training_args.predict_with_generate:
        return
    if training_args.generation_num_beams is None:
        training_args.generation_num_beams = generation_args.num_beams
    if training_args.generation_max_length is None:
        training_args.generation_max_length = generation_args.max_new_tokens + 1


def _training_eval(encoded, data_args, training_args, generation_args, tokenizer):
    """The validation rows evaluated during training, and the `compute_metrics` that scores them."""
    eval_dataset = encoded.get("validation")
    if not training_args.predict_with_generate:
        return eval_dataset, None  # the loss only
    rows = generation_args.eval_generation_samples
    if eval_dataset is not None and rows is not None and rows < len(eval_dataset):
        eval_dataset = eval_dataset.select(range(rows))
    return eval_dataset, build_generation_compute_metrics(data_args.task, tokenizer)


def _final_losses(trainer, encoded) -> dict[str, float]:
    """`eval_loss` / `test_loss` on the whole splits; generation is left to `score_splits`."""
    trainer.compute_metrics = None  # without metrics the Trainer evaluates the loss and never generates
    metrics: dict[str, float] = {}
    for split, prefix in SPLITS:
        if split in encoded:
            metrics.update(trainer.evaluate(encoded[split], metric_key_prefix=prefix))
    return metrics


def score_splits(
    model,
    tokenizer,
    raw,
    data_args: DataArguments,
    generation_args: GenerationArguments,
    *,
    prefix: str,
    bos: int | None,
    key: str = "",
) -> dict[str, float]:
    """Generate for every validation and test source and score against the raw references.

    Returns:
        `{key}eval_<score>` and `{key}test_<score>` (e.g. `teacher_test_rouge2`) for the splits there are.
    """
    metrics: dict[str, float] = {}
    for split, name in SPLITS:
        if split not in raw:
            continue
        sources, references = seq2seq_texts(raw, data_args, split)
        predictions = generate(
            model,
            tokenizer,
            sources,
            generation_args,
            prefix=prefix,
            max_source_length=data_args.max_source_length,
            forced_bos_token_id=bos,
        )
        scores = task_scores(data_args.task, predictions, references)
        metrics.update({f"{key}{name}_{score}": value for score, value in scores.items()})
    return metrics


def _data_summary(data_args: DataArguments, encoded, prefix: str, generation_args) -> dict[str, Any]:
    return {
        "task": data_args.task,
        "dataset": data_args.dataset_name,
        "train file": data_args.train_file,
        "validation file": data_args.validation_file,
        "test file": data_args.test_file,
        "source column": data_args.source_column,
        "target column": data_args.target_column,
        "rows": ", ".join(f"{split} {len(ds):,}" for split, ds in encoded.items()),
        "source prefix": prefix or None,
        "languages": f"{data_args.source_lang} -> {data_args.target_lang}" if data_args.source_lang else None,
        "max source / target length": f"{data_args.max_source_length} / {data_args.max_target_length}",
        "decoding of the scores": f"{generation_args.num_beams} beam(s), at most "
        f"{generation_args.max_new_tokens} new tokens",
    }


def _usage(prefix: str, max_new_tokens: int) -> list[str]:
    # transformers 5 has no summarization / translation pipelines: generate directly.
    return [
        "from transformers import AutoModelForSeq2SeqLM, AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        'model = AutoModelForSeq2SeqLM.from_pretrained("path/to/this/folder")',
        f"inputs = tokenizer([{prefix + 'a text to process'!r}], return_tensors='pt')",
        f"output = model.generate(**inputs, max_new_tokens={max_new_tokens})",
        "print(tokenizer.batch_decode(output, skip_special_tokens=True))",
    ]


# ---------------------------------------------------------------------------------------------------
# Fine-tuning a teacher.
# ---------------------------------------------------------------------------------------------------


def run_finetune(
    model_args: FinetuneModelArguments,
    data_args: DataArguments,
    training_args: TaskTrainingArguments,
    generation_args: GenerationArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, float]:
    """Fine-tune an encoder-decoder model or checkpoint for summarisation or translation.

    Saves model, tokenizer, resolved config and model card in `--output_dir`; returns the Trainer's
    train metrics, `eval_loss` / `test_loss`, and the generated scores (`eval_rouge2`, `test_bleu`, ...).
    """
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer

    check_output_dir(training_args)
    set_seed(training_args.seed)  # before any model is built: new heads start the same every run

    # Data (columns checked before the model loads), model, tokenizer (language codes set), prefix.
    if model_args.freeze_layers:
        raise ValueError("--freeze_layers applies to classification teachers only; drop it for seq2seq tasks")
    raw = load_raw_splits(data_args)
    name = model_args.model_name_or_path
    tokenizer_name = model_args.tokenizer_name or name
    model = load_seq2seq_model(name, flag="--model_name_or_path", task=data_args.task)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    vocab_size = _vocab_config(model.config).vocab_size
    if len(tokenizer) > vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer_name} has {len(tokenizer)} tokens but {name} has vocab_size {vocab_size}; "
            "pass the model's own tokenizer (--tokenizer_name)"
        )
    prefix = prepare_tokenizer(tokenizer, model.config, data_args)
    bos = forced_bos_token_id(tokenizer, model.config, data_args)
    _set_forced_bos(model, bos)

    start = model.config.to_dict().get("decoder_start_token_id")
    encoded = encode_seq2seq_splits(raw, data_args, tokenizer, prefix, decoder_start_token_id=start)
    check_eval_setup(encoded, training_args)
    _prepare_generation(training_args, generation_args)
    eval_dataset, compute_metrics = _training_eval(
        encoded, data_args, training_args, generation_args, tokenizer
    )

    # Train (the fresh parameters at a higher rate when asked), score, save.
    optimizer = None
    if model_args.fresh_lr_multiplier != 1:
        from ckadistill.warm_start import fresh_lr_optimizer

        optimizer = fresh_lr_optimizer(model, training_args, model_args.fresh_lr_multiplier)
    trainer = Seq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100),
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
        optimizers=(optimizer, None),  # the Trainer builds the schedule over every group
    )
    result = trainer.train(
        resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    metrics = {**result.metrics, **_final_losses(trainer, encoded)}
    metrics.update(
        score_splits(trainer.model, tokenizer, raw, data_args, generation_args, prefix=prefix, bos=bos)
    )
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        save_run_files(
            trainer,
            output_dir,
            metrics,
            (model_args, data_args, training_args, generation_args),
            header=f"ckadistill finetune --task {data_args.task}",
        )
        write_model_card(
            output_dir,
            model=trainer.model,
            title=f"{Path(name).name} fine-tuned for {data_args.task}",
            summary=f"`{name}` fine-tuned with ckadistill on {data_args.train_file or data_args.dataset_name}.",
            metrics=metrics,
            labels=None,
            data=_data_summary(data_args, encoded, prefix, generation_args),
            training=training_summary(training_args, trainer),
            pipeline_tag=data_args.task,
            usage=_usage(prefix, generation_args.max_new_tokens),
        )
    return metrics


# ---------------------------------------------------------------------------------------------------
# Distilling a student.
# ---------------------------------------------------------------------------------------------------


def _load_student(
    model_args: DistillModelArguments, teacher, tokenizer, sources: list[str], *, task: str, seed: int
):
    """An existing student directory (and its tokenizer, if saved), or a student built from the teacher."""
    from transformers import AutoTokenizer

    if model_args.student is not None:
        student = load_seq2seq_model(model_args.student, flag="--student", task=task)
        student_dir = Path(model_args.student)
        has_tokenizer = (student_dir / "tokenizer.json").is_file() or (
            student_dir / "tokenizer_config.json"
        ).is_file()
        return student, AutoTokenizer.from_pretrained(model_args.student) if has_tokenizer else None
    from ckadistill.students import student_from_args

    # --student_layers gives both stacks their depth unless a stack has its own flag.
    student = student_from_args(teacher, model_args, init_texts=sources, tokenizer=tokenizer, seed=seed)
    return student, None


def _distillation_summary(distill_args: DistillArguments, layer_map) -> dict[str, Any]:
    from ckadistill.layer_maps import format_layer_map

    terms = [
        f"{distill_args.alpha_task}·token CE",
        f"{distill_args.alpha_kd}·token KD(T={distill_args.temperature})",
    ]
    if distill_args.uses_hidden:
        terms.append(
            f"{distill_args.alpha_hidden}·{distill_args.hidden_reduction}_pairs {distill_args.hidden_loss}"
        )
    return {
        "loss": " + ".join(terms),
        "hidden loss": distill_args.hidden_loss + (" (1 - sqrt(CKA))" if distill_args.cka_sqrt else ""),
        "encoder layer map (student:teacher)": f"{distill_args.layer_map} -> {format_layer_map(list(layer_map.encoder))}",
        "decoder layer map (student:teacher)": (
            f"{distill_args.decoder_layer_map} -> {format_layer_map(list(layer_map.decoder))}"
        ),
        "pair reduction": distill_args.hidden_reduction,
        "hidden level": distill_args.hidden_level,
        "hidden weight schedule": distill_args.hidden_schedule,
        "reverse KL": distill_args.kd_reverse,
    }


def run_distill(
    model_args: DistillModelArguments,
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: TaskTrainingArguments,
    generation_args: GenerationArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, float]:
    """Distil an encoder-decoder teacher into a smaller student for summarisation or translation.

    Writes to `--output_dir`: the student (`save_pretrained`) with the teacher's tokenizer (its trimmed
    copy with `--trim_vocab`),
    `ckadistill_config.yaml`, `layer_map.json` (encoder and decoder pairs), `all_results.json`,
    `trainer_state.json`, the model card `README.md`, and the Trainer's checkpoints.

    Returns:
        Flat metrics: `train_*`, `eval_loss` / `test_loss` (the distillation loss), the generated scores
        `eval_*` / `test_*` (`rouge1/2/L/Lsum` or `bleu`, `chrf`), and the teacher's as `teacher_eval_*` /
        `teacher_test_*`.
    """
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    check_output_dir(training_args)
    set_seed(training_args.seed)  # before any model is built: new heads start the same every run

    from ckadistill.layer_maps import format_layer_map, layer_map_for
    from ckadistill.trainer import DistillationTrainer
    from ckadistill.vocab import check_trim_setup, trim_line, trim_student

    # Data (columns checked before any model loads), then the teacher and its tokenizer (the
    # student's too), with language codes set and the source prefix chosen.
    raw = load_raw_splits(data_args)
    tokenizer_name = model_args.tokenizer_name or model_args.teacher
    with whole_models():  # replicated on every process, even under ZeRO-3 (see ckadistill.distributed)
        teacher = load_seq2seq_model(model_args.teacher, flag="--teacher", task=data_args.task)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    if model_args.trim_vocab:
        check_trim_setup(tokenizer, teacher, model_args.trim_keep_top)
    prefix = prepare_tokenizer(tokenizer, teacher.config, data_args)
    bos = forced_bos_token_id(tokenizer, teacher.config, data_args)
    sample = raw["train"].select(range(min(256, len(raw["train"]))))[data_args.source_column]

    # Student, checked against the teacher before any training.
    with whole_models():  # cut from the whole teacher; DeepSpeed / FSDP shard it when the Trainer wraps it
        student, student_tokenizer = _load_student(
            model_args,
            teacher,
            tokenizer,
            [prefix + str(s) for s in sample],
            task=data_args.task,
            seed=training_args.seed,
        )
    check_vocab_compatible(
        _vocab_config(teacher.config),
        _vocab_config(student.config),
        tokenizer,
        tokenizer_name=tokenizer_name,
        student_tokenizer=student_tokenizer,
    )
    for model in (teacher, student):
        _set_forced_bos(model, bos)

    # --trim_vocab: the student keeps the vocabulary of the training sources and targets (its config's
    # token ids, forced BOS included, renumbered); the data is tokenised with its trimmed tokenizer, and
    # the teacher reads the same tokens through `teacher_ids`, student id -> teacher id.
    student_tokenizer, student_bos, teacher_ids, trim_info = tokenizer, bos, None, None
    if model_args.trim_vocab:
        sources, targets = seq2seq_texts(raw, data_args, "train")
        heldout = None
        if "validation" in raw:
            held_sources, held_targets = seq2seq_texts(raw, data_args, "validation")
            heldout = [prefix + s for s in held_sources] + held_targets
        student, student_tokenizer, teacher_ids, trim_info = trim_student(
            student,
            tokenizer,
            [prefix + s for s in sources] + targets,
            min_count=model_args.trim_min_count,
            keep_top=model_args.trim_keep_top,
            heldout=heldout,
        )
        prepare_tokenizer(student_tokenizer, teacher.config, data_args)  # language codes, as the teacher's
        student_bos = student.generation_config.forced_bos_token_id if bos is not None else None
    layer_map = layer_map_for(
        teacher.config, student.config, encoder=distill_args.layer_map, decoder=distill_args.decoder_layer_map
    )
    logger.info(
        "Layer maps (student:teacher): encoder %s, decoder %s",
        format_layer_map(list(layer_map.encoder)),
        format_layer_map(list(layer_map.decoder)),
    )

    start = student.config.to_dict().get("decoder_start_token_id")  # in the student's ids
    encoded = encode_seq2seq_splits(raw, data_args, student_tokenizer, prefix, decoder_start_token_id=start)
    check_eval_setup(encoded, training_args)
    _prepare_generation(training_args, generation_args)
    eval_dataset, compute_metrics = _training_eval(
        encoded, data_args, training_args, generation_args, student_tokenizer
    )

    # Train.
    trainer = DistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=eval_dataset,
        processing_class=student_tokenizer,  # saved with the student
        data_collator=DataCollatorForSeq2Seq(student_tokenizer, model=student, label_pad_token_id=-100),
        compute_metrics=compute_metrics,
        teacher=teacher,
        distill_args=distill_args,
        layer_pairs=list(layer_map.encoder),
        decoder_layer_pairs=list(layer_map.decoder),
        teacher_token_ids=teacher_ids,
        callbacks=list(callbacks),
    )
    result = trainer.train(
        resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint, training_args.output_dir)
    )

    # Score student and teacher on the same splits, decoding the same way, each with its own tokenizer.
    metrics = {**result.metrics, **_final_losses(trainer, encoded)}
    for model, model_tokenizer, model_bos, key in (
        (trainer.model, student_tokenizer, student_bos, ""),
        (teacher, tokenizer, bos, "teacher_"),
    ):
        metrics.update(
            score_splits(
                model, model_tokenizer, raw, data_args, generation_args, prefix=prefix, bos=model_bos, key=key
            )
        )

    # Save the student, its tokenizer, the resolved config, both layer maps and the model card.
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        save_run_files(
            trainer,
            output_dir,
            metrics,
            (model_args, data_args, distill_args, training_args, generation_args),
            header=f"ckadistill distill --task {data_args.task}"
            + (f"\n{trim_line(trim_info)}" if trim_info else ""),
            layer_map=(distill_args.layer_map, layer_map.encoder),
            decoder_layer_map=(distill_args.decoder_layer_map, layer_map.decoder),
        )
        compression = count_parameters(teacher) / count_parameters(trainer.model)
        write_model_card(
            output_dir,
            model=trainer.model,
            title=f"Student distilled from {Path(model_args.teacher).name}",
            summary=(
                f"A {compression:.1f}× smaller {data_args.task} student of `{model_args.teacher}`, distilled "
                f"with ckadistill ({distill_args.hidden_loss} hidden-state matching on encoder and decoder) on "
                f"{data_args.train_file or data_args.dataset_name}."
            ),
            metrics=metrics,
            labels=None,
            data=_data_summary(data_args, encoded, prefix, generation_args),
            training=training_summary(training_args, trainer),
            teacher=teacher,
            teacher_name=model_args.teacher,
            distillation=_distillation_summary(distill_args, layer_map),
            pipeline_tag=data_args.task,
            usage=_usage(prefix, generation_args.max_new_tokens),
            vocabulary=trim_info,
        )
    return metrics
