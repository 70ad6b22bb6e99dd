"""Typed entry points for summarisation and translation: fine-tune a teacher, distil a student, evaluate models.

The encoder-decoder counterparts of `ckadistill.tasks.classification`, in the same phases (models -> data ->
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

import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
    GenerationArguments,
    TaskTrainingArguments,
    save_config,
)
from ckadistill.data import check_vocab_compatible, load_raw_splits
from ckadistill.metrics import count_parameters
from ckadistill.model_card import write_model_card
from ckadistill.runs import CONFIG_FILE, LAYER_MAP_FILE, check_eval_setup, resume_target, training_summary
from ckadistill.tasks.seq2seq_data import (
    encode_seq2seq_splits,
    forced_bos_token_id,
    prepare_tokenizer,
    seq2seq_texts,
)
from ckadistill.tasks.seq2seq_metrics import (
    build_generation_compute_metrics,
    generate,
    measure_generation_latency,
    task_scores,
)

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

# Parameters a warm-started bert2bert did not get from its BERT checkpoint: every cross-attention weight,
# and the decoder's LM-head transform and output bias (the output weight is tied to the pretrained word
# embeddings, and `named_parameters` lists it under them). Found by name, not from `from_pretrained`'s
# loading info: once the warm-started model is saved (the quickstart saves it, so that an interrupted
# fine-tune resumes from it) the checkpoint holds every tensor and the loading info reports none missing.
FRESH_PARAMETER_PATTERNS = ("crossattention.", "decoder.cls.predictions.")


def fresh_parameter_names(model) -> list[str]:
    """Names of the trainable parameters that match `FRESH_PARAMETER_PATTERNS`."""
    return [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and any(pattern in name for pattern in FRESH_PARAMETER_PATTERNS)
    ]


def fresh_lr_optimizer(
    model, training_args: TaskTrainingArguments, multiplier: float
) -> torch.optim.Optimizer:
    """The Trainer's optimizer, with the fresh parameters (`fresh_parameter_names`) at `multiplier` × the rate.

    Four parameter groups: the other parameters with and without weight decay at `--learning_rate`
    (first, so the logged `learning_rate` is the base schedule), then the fresh ones with and without
    weight decay at `multiplier × --learning_rate`. Weight decay follows the Trainer's own
    `get_decay_parameter_names` (none on biases and LayerNorm), and the optimizer class and its
    arguments (betas, eps, ...) follow `--optim` through `Trainer.get_optimizer_cls_and_kwargs`.

    Handed to the Trainer as `optimizers=(optimizer, None)`, it still gets the Trainer's schedule:
    `get_scheduler` builds a `LambdaLR`, which sets every group's rate to its initial rate times the
    same factor at each step, so warm-up and decay keep the ratio between the groups.

    Raises:
        ValueError: no parameter of the model is fresh (not a bert2bert model), naming the flag.
    """
    from transformers import Seq2SeqTrainer
    from transformers.trainer_optimizer import is_optimizer_factory

    fresh = set(fresh_parameter_names(model))
    if not fresh:
        raise ValueError(
            f"--fresh_lr_multiplier {multiplier:g} found no fresh parameters in this {model.config.model_type} "
            f"model (names containing {' or '.join(FRESH_PARAMETER_PATTERNS)}: bert2bert cross-attention); "
            "leave it at 1 for other models"
        )
    # `get_decay_parameter_names` reads nothing from the Trainer instance: called unbound, before the
    # Trainer exists, it gives the very names the Trainer's own `create_optimizer` would use.
    decay = set(Seq2SeqTrainer.get_decay_parameter_names(None, model))
    optimizer_cls, optimizer_kwargs = Seq2SeqTrainer.get_optimizer_cls_and_kwargs(training_args, model)
    if is_optimizer_factory(optimizer_cls) or {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
        raise ValueError(
            f"--fresh_lr_multiplier needs an optimizer built from parameter groups, but --optim "
            f"{training_args.optim} builds its own: use an AdamW --optim (e.g. adamw_torch) or leave the "
            "multiplier at 1"
        )
    base_lr = training_args.learning_rate
    groups = []
    for is_fresh, lr in ((False, base_lr), (True, base_lr * multiplier)):
        for has_decay, weight_decay in ((True, training_args.weight_decay), (False, 0.0)):
            params = [
                p
                for n, p in model.named_parameters()
                if p.requires_grad and (n in fresh) == is_fresh and (n in decay) == has_decay
            ]
            groups.append({"params": params, "weight_decay": weight_decay, "lr": lr})
    logger.info(
        "Fresh parameters (%s) learn at %g × %g: %d tensors, %d values",
        ", ".join(FRESH_PARAMETER_PATTERNS),
        multiplier,
        base_lr,
        len(fresh),
        sum(p.numel() for g in groups[2:] for p in g["params"]),
    )
    return optimizer_cls(groups, **optimizer_kwargs)


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
    result = trainer.train(resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint))
    metrics = {**result.metrics, **_final_losses(trainer, encoded)}
    metrics.update(
        score_splits(trainer.model, tokenizer, raw, data_args, generation_args, prefix=prefix, bos=bos)
    )
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.save_state()
        save_config(
            output_dir / CONFIG_FILE,
            model_args,
            data_args,
            training_args,
            generation_args,
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
    from ckadistill.students import make_student

    # --student_layers gives both stacks their depth unless a stack has its own flag.
    depth = model_args.student_layers
    encoder_layers = depth if model_args.student_encoder_layers is None else model_args.student_encoder_layers
    decoder_layers = depth if model_args.student_decoder_layers is None else model_args.student_decoder_layers
    student = make_student(
        teacher,
        hidden_size=model_args.student_hidden_size,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        ffn_size=model_args.student_ffn_size,
        num_heads=model_args.student_heads,
        init=model_args.student_init,
        init_texts=sources,
        tokenizer=tokenizer,
        seed=seed,
    )
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

    Writes to `--output_dir`: the student (`save_pretrained`) with the teacher's tokenizer,
    `ckadistill_config.yaml`, `layer_map.json` (encoder and decoder pairs), `all_results.json`,
    `trainer_state.json`, the model card `README.md`, and the Trainer's checkpoints.

    Returns:
        Flat metrics: `train_*`, `eval_loss` / `test_loss` (the distillation loss), the generated scores
        `eval_*` / `test_*` (`rouge1/2/L/Lsum` or `bleu`, `chrf`), and the teacher's as `teacher_eval_*` /
        `teacher_test_*`.
    """
    from transformers import AutoTokenizer, DataCollatorForSeq2Seq

    from ckadistill.layer_maps import format_layer_map, layer_map_for
    from ckadistill.trainer import DistillationTrainer

    # Data (columns checked before any model loads), then the teacher and its tokenizer (the
    # student's too), with language codes set and the source prefix chosen.
    raw = load_raw_splits(data_args)
    tokenizer_name = model_args.tokenizer_name or model_args.teacher
    teacher = load_seq2seq_model(model_args.teacher, flag="--teacher", task=data_args.task)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    prefix = prepare_tokenizer(tokenizer, teacher.config, data_args)
    bos = forced_bos_token_id(tokenizer, teacher.config, data_args)
    sample = raw["train"].select(range(min(256, len(raw["train"]))))[data_args.source_column]

    # Student, checked against the teacher before any training.
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
    layer_map = layer_map_for(
        teacher.config, student.config, encoder=distill_args.layer_map, decoder=distill_args.decoder_layer_map
    )
    logger.info(
        "Layer maps (student:teacher): encoder %s, decoder %s",
        format_layer_map(list(layer_map.encoder)),
        format_layer_map(list(layer_map.decoder)),
    )

    start = teacher.config.to_dict().get("decoder_start_token_id")
    encoded = encode_seq2seq_splits(raw, data_args, tokenizer, prefix, decoder_start_token_id=start)
    check_eval_setup(encoded, training_args)
    _prepare_generation(training_args, generation_args)
    eval_dataset, compute_metrics = _training_eval(
        encoded, data_args, training_args, generation_args, tokenizer
    )

    # Train.
    trainer = DistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=student, label_pad_token_id=-100),
        compute_metrics=compute_metrics,
        teacher=teacher,
        distill_args=distill_args,
        layer_pairs=list(layer_map.encoder),
        decoder_layer_pairs=list(layer_map.decoder),
        callbacks=list(callbacks),
    )
    result = trainer.train(resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint))

    # Score student and teacher on the same splits, decoding the same way.
    metrics = {**result.metrics, **_final_losses(trainer, encoded)}
    for model, key in ((trainer.model, ""), (teacher, "teacher_")):
        metrics.update(
            score_splits(model, tokenizer, raw, data_args, generation_args, prefix=prefix, bos=bos, key=key)
        )

    # Save the student, its tokenizer, the resolved config, both layer maps and the model card.
    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        trainer.save_metrics("all", metrics)
        trainer.save_state()  # trainer_state.json: the full log history, cka/enc_* and cka/dec_* included
        save_config(
            output_dir / CONFIG_FILE,
            model_args,
            data_args,
            distill_args,
            training_args,
            generation_args,
            header=f"ckadistill distill --task {data_args.task}",
        )
        maps = {
            "spec": distill_args.layer_map,
            "encoder": format_layer_map(list(layer_map.encoder)),
            "pairs": [list(p) for p in layer_map.encoder],
            "decoder_spec": distill_args.decoder_layer_map,
            "decoder": format_layer_map(list(layer_map.decoder)),
            "decoder_pairs": [list(p) for p in layer_map.decoder],
        }
        (output_dir / LAYER_MAP_FILE).write_text(json.dumps(maps, indent=2) + "\n", encoding="utf-8")
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
        )
    return metrics


# ---------------------------------------------------------------------------------------------------
# Evaluating saved models side by side.
# ---------------------------------------------------------------------------------------------------


def evaluate_models(
    model_dirs: Sequence[str],
    data_args: DataArguments,
    generation_args: GenerationArguments,
    *,
    split: str = "test",
    latency_batch_size: int = 16,
    latency_new_tokens: int = 32,
    latency_examples: int = 32,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Scores, size and generation latency of saved encoder-decoders on one data split, one row per model.

    Scores: every source generated with `generation_args`, scored against the raw references. Latency:
    greedy generation of exactly `latency_new_tokens` tokens for each of the first `latency_examples`
    sources, at batch 1 and at `latency_batch_size` (`measure_generation_latency`), so every model does
    the same work.

    Returns:
        Rows with `name`, `path`, `parameters`, the task scores (`rouge1`, `rouge2`, `rougeL`,
        `rougeLsum`, or `bleu`, `chrf`), `ms_per_example_bs1`, `ms_per_example_bs{N}`,
        `tokens_per_second_bs{N}` (N = `latency_batch_size`), `latency_batch_size`,
        `latency_new_tokens`, `latency_examples`, `examples`, `torch_threads`, `device`.
    """
    from datasets import DatasetDict
    from transformers import AutoTokenizer

    if not model_dirs:
        raise ValueError("give at least one model directory to evaluate")
    for flag, value in (
        ("latency_batch_size", latency_batch_size),
        ("latency_new_tokens", latency_new_tokens),
        ("latency_examples", latency_examples),
    ):
        if value < 1:
            raise ValueError(f"--{flag} must be >= 1, got {value}")
    raw = load_raw_splits(data_args, require_train=False)
    if split not in raw:
        raise ValueError(f"--split {split} is not in the data; available splits: {', '.join(raw)}")
    raw = DatasetDict({split: raw[split]})
    sources, references = seq2seq_texts(raw, data_args, split)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for model_dir in model_dirs:
        model = load_seq2seq_model(model_dir, flag="MODEL_DIR", task=data_args.task).to(device).eval()
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prefix = prepare_tokenizer(tokenizer, model.config, data_args)
        bos = forced_bos_token_id(tokenizer, model.config, data_args)
        predictions = generate(
            model,
            tokenizer,
            sources,
            generation_args,
            prefix=prefix,
            max_source_length=data_args.max_source_length,
            forced_bos_token_id=bos,
        )
        timed = [prefix + s for s in sources[:latency_examples]]
        latency = {
            size: measure_generation_latency(
                model,
                tokenizer,
                timed,
                batch_size=size,
                new_tokens=latency_new_tokens,
                max_source_length=data_args.max_source_length,
            )
            for size in sorted({1, latency_batch_size})
        }
        n = latency_batch_size
        rows.append(
            {
                "name": Path(model_dir).name,
                "path": str(model_dir),
                "parameters": count_parameters(model),
                **task_scores(data_args.task, predictions, references),
                "ms_per_example_bs1": latency[1]["ms_per_example"],
                f"ms_per_example_bs{n}": latency[n]["ms_per_example"],
                f"tokens_per_second_bs{n}": latency[n]["tokens_per_second"],
                "latency_batch_size": n,
                "latency_new_tokens": latency_new_tokens,
                "latency_examples": len(timed),
                "examples": len(sources),
                "torch_threads": torch.get_num_threads(),
                "device": device,
            }
        )
        logger.info("Evaluated %s: %s", model_dir, rows[-1])
    return rows


# (row key, header, format) of the scores; only those some row has are shown.
SCORE_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("rouge1", "R-1", "{:.2f}"),
    ("rouge2", "R-2", "{:.2f}"),
    ("rougeL", "R-L", "{:.2f}"),
    ("rougeLsum", "R-Lsum", "{:.2f}"),
    ("bleu", "BLEU", "{:.2f}"),
    ("chrf", "chrF", "{:.2f}"),
)


def results_table(rows: Sequence[dict]) -> str:
    """A Markdown table of `evaluate_models` rows; compression and speed-up are relative to the first row.

    The relative score is R-2 for summarisation rows, BLEU for translation rows; speed-up is the first
    row's milliseconds per example at batch N over each row's.
    """
    if not rows:
        raise ValueError("results_table needs at least one row")
    ref, n = rows[0], rows[0]["latency_batch_size"]
    main = "rouge2" if "rouge2" in ref else "bleu"
    columns = [
        ("name", "model", "{}"),
        ("parameters", "parameters", "{:,}"),
        ("compression", "compression", "{:.2f}×"),
        *(c for c in SCORE_COLUMNS if any(c[0] in row for row in rows)),
        ("relative", f"{'R-2' if main == 'rouge2' else 'BLEU'} vs first", "{:.1%}"),
        ("ms_per_example_bs1", "ms/example (batch 1)", "{:.1f}"),
        (f"ms_per_example_bs{n}", f"ms/example (batch {n})", "{:.1f}"),
        (f"tokens_per_second_bs{n}", f"tokens/s (batch {n})", "{:.0f}"),
        ("speedup", f"speed-up (batch {n})", "{:.2f}×"),
    ]
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |"]
    lines.append("|" + "|".join("---" if key == "name" else "---:" for key, _, _ in columns) + "|")
    for row in rows:
        row = {
            **row,
            "compression": ref["parameters"] / row["parameters"],
            "relative": row.get(main, 0.0) / ref[main] if ref.get(main) else None,
            "speedup": ref[f"ms_per_example_bs{n}"] / row[f"ms_per_example_bs{n}"]
            if row.get(f"ms_per_example_bs{n}")
            else None,
        }
        cells = [fmt.format(row[k]) if row.get(k) is not None else "-" for k, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Scores on {ref['examples']:,} examples; latency: greedy generation of exactly "
        f"{ref['latency_new_tokens']} tokens for the first {ref['latency_examples']} examples (warm-up excluded) "
        f"on {ref['device']} with {ref['torch_threads']} torch threads; compression and speed-up relative to "
        f"{ref['name']}."
    )
    return "\n".join(lines)
