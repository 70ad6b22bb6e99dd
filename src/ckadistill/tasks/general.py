"""Task-agnostic distillation (`ckadistill distill --task general`): a smaller copy of a pretrained encoder,
learnt on raw text before (or instead of) any task.

The paper's first stage. What the student learns from depends on what the teacher outputs:

- a masked LM (`BertForMaskedLM`, ...): KL on its token distributions at every real token of unmasked
  text (`--mlm_probability 0`, the paper), or CE + KL at BERT-style masked positions, plus CKA on the
  embeddings and every mapped layer;
- a bare encoder (`BertModel`; sentence encoders such as all-MiniLM-L6-v2): CKA on the mapped layers
  plus a loss on the pooled sentence vectors (`--pooled_loss`);
- an encoder-decoder LM (BART, mBART, Marian, T5, bert2bert): token KL (and CE) on a denoising target
  (`--seq2seq_objective`: the clean text reconstructed, as the paper does; BART's text infilling; T5's
  span corruption) plus CKA on the mapped layers of both stacks.

When the teacher folder is a sentence-transformers model (`modules.json`), the student folder is one
too: the teacher's pooling (resized to the student's width) and normalisation are written beside it,
so `SentenceTransformer(student_dir)` loads it. The student then goes on to a task with
`ckadistill distill --task classification --student DIR`.

    metrics = run_distill(DistillModelArguments(teacher="t", student_layers=2), DataArguments(task="general",
                          train_file="corpus.txt"), DistillArguments(), TaskTrainingArguments(output_dir="out"))
"""

from __future__ import annotations

import itertools
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, set_seed

from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    TaskTrainingArguments,
)
from ckadistill.data import check_vocab_compatible
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
from ckadistill.tasks.general_data import encode_corpus, load_corpus, text_column_of

logger = logging.getLogger(__name__)

ST_MODULES_FILE = "modules.json"  # marks a sentence-transformers folder
ST_CONFIG_FILES = ("config_sentence_transformers.json", "sentence_bert_config.json")
ST_CARRIED_MODULES = ("Transformer", "Pooling", "Normalize")  # module types a narrower student can keep
AGREEMENT_SAMPLES = 512  # validation documents for the embedding-agreement scores


# ---------------------------------------------------------------------------------------------------
# Sentence-transformers folders.
# ---------------------------------------------------------------------------------------------------


def sentence_transformer_modules(folder: str | Path) -> list[dict] | None:
    """The module list of a sentence-transformers folder, None for a plain transformers folder."""
    path = Path(folder) / ST_MODULES_FILE
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def sentence_pooling(folder: str | Path) -> str:
    """How a sentence vector is read from the last hidden states: 'cls' when the folder's Pooling module
    says so, else 'mean' (sentence-transformers' default, and a plain encoder's)."""
    for module in sentence_transformer_modules(folder) or []:
        if module["type"].endswith("Pooling"):
            config = json.loads((Path(folder) / module["path"] / "config.json").read_text(encoding="utf-8"))
            if config.get("pooling_mode_cls_token"):
                return "cls"
            if not config.get("pooling_mode_mean_tokens", True):
                logger.warning("Pooling of %s is neither mean nor cls; the pooled loss uses the mean", folder)
    return "mean"


def write_sentence_transformer_files(teacher_dir: str | Path, student_dir: str | Path, width: int) -> bool:
    """Make `student_dir` (a saved transformers encoder) a sentence-transformers folder like the teacher's.

    The module list and the configs are copied; the Pooling module's `word_embedding_dimension`
    becomes the student's width. Returns False (and writes nothing) when the teacher holds a module a
    narrower student cannot keep (a Dense projection, whose weights have the teacher's width).
    """
    modules = sentence_transformer_modules(teacher_dir)
    if modules is None:
        return False
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    unknown = [kind for kind in kinds if kind not in ST_CARRIED_MODULES]
    if unknown:
        logger.warning(
            "The teacher's sentence-transformers modules %s have no student counterpart; the student is saved "
            "as a plain transformers encoder",
            unknown,
        )
        return False
    teacher_dir, student_dir = Path(teacher_dir), Path(student_dir)
    shutil.copy(teacher_dir / ST_MODULES_FILE, student_dir / ST_MODULES_FILE)
    for name in ST_CONFIG_FILES:
        if (teacher_dir / name).is_file():
            shutil.copy(teacher_dir / name, student_dir / name)
    for module, kind in zip(modules, kinds, strict=True):
        if not module["path"]:
            continue  # the Transformer module is the folder itself
        target = student_dir / module["path"]
        target.mkdir(parents=True, exist_ok=True)
        source_config = teacher_dir / module["path"] / "config.json"
        if source_config.is_file():
            config = json.loads(source_config.read_text(encoding="utf-8"))
            if kind == "Pooling":
                config["word_embedding_dimension"] = width
            (target / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return True


# ---------------------------------------------------------------------------------------------------
# How close the student's sentence vectors are to the teacher's.
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def sentence_vectors(
    model, rows: Sequence[dict], collator, *, pooling: str = "mean", batch_size: int = 64
) -> torch.Tensor:
    """`(N, d)` pooled last hidden states of tokenised rows (`input_ids`, `attention_mask`)."""
    from ckadistill.losses import mean_pool

    model.eval()
    body = model.base_model  # a masked LM's encoder, or the encoder itself
    device = next(model.parameters()).device
    vectors = []
    for start in range(0, len(rows), batch_size):
        batch = collator(
            [{k: row[k] for k in ("input_ids", "attention_mask")} for row in rows[start : start + batch_size]]
        )
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}
        hidden = body(**batch).last_hidden_state  # (B, T, d)
        vectors.append(
            (hidden[:, 0] if pooling == "cls" else mean_pool(hidden, batch["attention_mask"])).float().cpu()
        )
    return torch.cat(vectors)


def embedding_agreement(student_vectors: torch.Tensor, teacher_vectors: torch.Tensor) -> dict[str, float]:
    """How well the student's sentence vectors stand in for the teacher's, on the same sentences:

    - `pooled_cka`: linear CKA between the two sets of vectors (1 = the same geometry up to rotation
      and scale);
    - `similarity_spearman`: Spearman correlation between the two models' cosine similarities over
      every pair of sentences (what a semantic-search or clustering user sees).
    """
    from scipy.stats import spearmanr

    from ckadistill.losses import linear_cka

    def similarities(v: torch.Tensor) -> np.ndarray:
        v = torch.nn.functional.normalize(v.float(), dim=-1)
        upper = torch.triu_indices(v.shape[0], v.shape[0], offset=1)
        return (v @ v.T)[upper[0], upper[1]].numpy()

    correlation = spearmanr(similarities(student_vectors), similarities(teacher_vectors)).statistic
    return {
        "pooled_cka": float(linear_cka(student_vectors, teacher_vectors)),
        "similarity_spearman": float(correlation),
    }


# ---------------------------------------------------------------------------------------------------
# Distilling a student.
# ---------------------------------------------------------------------------------------------------


def _load_models(model_args: DistillModelArguments, data_args: DataArguments, train, tokenizer, seed: int):
    """The teacher (a masked LM, bare encoder or encoder-decoder LM, by its config's architecture) and the student."""
    from ckadistill.students import load_teacher, student_from_args
    from ckadistill.trainer import model_kind

    teacher = load_teacher(model_args.teacher)
    kind = model_kind(teacher)
    if kind == "classifier":
        raise ValueError(
            f"--task general distils masked LMs, bare encoders and encoder-decoder LMs, but {model_args.teacher} "
            f"is a {type(teacher).__name__}: use --task classification for it, or pass the pretrained "
            "checkpoint it was fine-tuned from"
        )
    if model_args.student is not None:
        student = type(teacher).from_pretrained(model_args.student)
        return teacher, student
    texts = None
    if model_args.student_init == "pca":
        column = text_column_of(train, data_args, "train_file")
        rows = itertools.islice((row[column] for row in train if str(row[column] or "").strip()), 256)
        texts = [str(text) for text in rows]
    student = student_from_args(teacher, model_args, init_texts=texts, tokenizer=tokenizer, seed=seed)
    return teacher, student


def seq2seq_objective(teacher, distill_args: DistillArguments) -> str:
    """The denoising objective of an encoder-decoder teacher: the flag's, or T5's own for T5."""
    if distill_args.seq2seq_objective != "auto":
        return distill_args.seq2seq_objective
    return "span_corruption" if teacher.config.model_type == "t5" else "reconstruction"


def _collator(
    kind: str, tokenizer, distill_args: DistillArguments, objective: str | None = None, seed: int = 0
):
    from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

    from ckadistill.tasks.general_data import DenoisingCollator

    if kind == "seq2seq":
        return DenoisingCollator(
            tokenizer,
            objective,
            density=distill_args.noise_density,
            mean_span=distill_args.mean_noise_span,
            seed=seed,
        )
    if distill_args.mlm_probability > 0:
        if kind != "mlm":
            raise ValueError(
                "--mlm_probability masks tokens for a masked-LM teacher, but this teacher has no MLM head: set "
                "--mlm_probability 0"
            )
        return DataCollatorForLanguageModeling(
            tokenizer, mlm=True, mlm_probability=distill_args.mlm_probability
        )
    return DataCollatorWithPadding(tokenizer)


def _distillation_summary(
    kind: str, distill_args: DistillArguments, layer_map, pooling: str, objective: str | None
) -> dict[str, Any]:
    from ckadistill.layer_maps import format_layer_map

    if kind == "seq2seq":
        terms = [f"{distill_args.alpha_task}·CE", f"{distill_args.alpha_kd}·KL(T={distill_args.temperature})"]
        terms = [f"({' + '.join(terms)}) on {objective}"]
    elif kind == "mlm":
        where = (
            f"{distill_args.mlm_probability:.0%} masked positions"
            if distill_args.mlm_probability > 0
            else "every real token (unmasked text)"
        )
        terms = [f"{distill_args.alpha_kd}·KL(T={distill_args.temperature}) at {where}"]
        if distill_args.mlm_probability > 0 and distill_args.alpha_task > 0:
            terms.insert(0, f"{distill_args.alpha_task}·MLM CE")
    else:
        terms = [
            f"{distill_args.alpha_pooled}·{distill_args.pooled_loss} on {pooling}-pooled sentence vectors"
        ]
    if distill_args.uses_hidden:
        terms.append(
            f"{distill_args.alpha_hidden}·{distill_args.hidden_reduction}_pairs {distill_args.hidden_loss}"
        )
    summary = {
        "stage": "task-agnostic (general) distillation",
        "loss": " + ".join(terms),
        "layer map (student:teacher)": f"{distill_args.layer_map} -> {format_layer_map(list(layer_map.encoder))}",
    }
    if layer_map.decoder:
        summary["decoder layer map"] = (
            f"{distill_args.decoder_layer_map} -> {format_layer_map(list(layer_map.decoder))}"
        )
    summary["pair reduction"] = distill_args.hidden_reduction
    return summary


def _card_usage(kind: str, is_sentence_model: bool, mask_token: str | None) -> tuple[str, list[str]]:
    """The model card's pipeline tag and its lines of usage code."""
    folder = '"path/to/this/folder"'
    if is_sentence_model:
        tag, lines = (
            "sentence-similarity",
            [
                "from sentence_transformers import SentenceTransformer",
                "",
                f"model = SentenceTransformer({folder})",
                'embeddings = model.encode(["a first sentence", "a second one"])',
            ],
        )
    elif kind == "mlm":
        tag, lines = (
            "fill-mask",
            [
                "from transformers import pipeline",
                "",
                f'fill = pipeline("fill-mask", model={folder})',
                f'print(fill("Paris is the {mask_token} of France."))',
            ],
        )
    else:
        auto = "AutoModelForSeq2SeqLM" if kind == "seq2seq" else "AutoModel"
        tag = "text2text-generation" if kind == "seq2seq" else "feature-extraction"
        lines = [
            f"from transformers import {auto}, AutoTokenizer",
            "",
            f"model = {auto}.from_pretrained({folder})",
            f"tokenizer = AutoTokenizer.from_pretrained({folder})",
        ]
    task = "summarization" if kind == "seq2seq" else "classification"
    return tag, [
        *lines,
        "",
        f"# for a task: ckadistill distill --task {task} --student path/to/this/folder ...",
    ]


def run_distill(
    model_args: DistillModelArguments,
    data_args: DataArguments,
    distill_args: DistillArguments,
    training_args: TaskTrainingArguments,
    callbacks: Sequence[TrainerCallback] = (),
) -> dict[str, float]:
    """Distil a pretrained masked LM or encoder into a smaller one on raw text.

    Writes to `--output_dir`: the student (`save_pretrained`, with sentence-transformers files when the
    teacher has them) and tokenizer, `ckadistill_config.yaml`, `layer_map.json`, `all_results.json`, the
    model card `README.md`, and the Trainer's checkpoints.

    Returns:
        `train_*` and `eval_*` metrics; `eval_pooled_cka` and `eval_similarity_spearman` compare the
        student's sentence vectors with the teacher's on up to 512 validation documents.
    """
    from transformers import AutoTokenizer

    check_output_dir(training_args)
    set_seed(training_args.seed)  # before any model is built: new heads start the same every run

    from ckadistill.layer_maps import format_layer_map, layer_map_for
    from ckadistill.packaged import packaged_model_path
    from ckadistill.trainer import DistillationTrainer, model_kind

    if model_args.trim_vocab:
        raise ValueError(
            "--trim_vocab trims a student to the texts of its task, and --task general distils on a general "
            "corpus: drop --trim_vocab here and trim in the task stage (--task classification / summarization "
            "/ translation --student DIR --trim_vocab true), or afterwards with ckadistill trim-vocab"
        )
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError(
            "--streaming corpora have no length, so the run needs --max_steps N (optimiser steps)"
        )
    if data_args.streaming and distill_args.cache_teacher:
        raise ValueError(
            "--cache_teacher keeps teacher outputs for the whole corpus in memory: drop --streaming"
        )
    model_args.teacher = packaged_model_path(model_args.teacher)  # the hub's MiniLM: the packaged copy
    tokenizer_name = model_args.tokenizer_name or model_args.teacher
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_name)
    train, validation = load_corpus(data_args)

    with whole_models():  # whole on every process, even under ZeRO-3 (see ckadistill.distributed)
        teacher, student = _load_models(model_args, data_args, train, tokenizer, training_args.seed)
    kind = model_kind(teacher)
    check_vocab_compatible(teacher.config, student.config, tokenizer, tokenizer_name=tokenizer_name)
    layer_map = layer_map_for(
        teacher.config, student.config, encoder=distill_args.layer_map, decoder=distill_args.decoder_layer_map
    )
    pairs, decoder_pairs = list(layer_map.encoder), list(layer_map.decoder)
    logger.info("Layer map (student:teacher): %s", format_layer_map(pairs))
    pooling = sentence_pooling(model_args.teacher)
    objective = seq2seq_objective(teacher, distill_args) if kind == "seq2seq" else None
    if (
        kind == "seq2seq" and data_args.source_lang
    ):  # mBART-style tokenizers frame text with its language code
        tokenizer.src_lang = data_args.source_lang

    encoded = {"train": encode_corpus(train, tokenizer, data_args)}
    if validation is not None:
        # validation documents stay whole (no packing) when the student is judged by its sentence vectors
        encoded["validation"] = encode_corpus(
            validation, tokenizer, data_args, flag="validation_file", pack=False
        )
    check_eval_setup(encoded, training_args)
    training_args.prediction_loss_only = (
        True  # evaluation reports the distillation loss, never gathers logits
    )

    trainer = DistillationTrainer(
        model=student,
        args=training_args,
        train_dataset=encoded["train"],
        eval_dataset=encoded.get("validation"),
        processing_class=tokenizer,
        data_collator=_collator(kind, tokenizer, distill_args, objective, training_args.seed),
        teacher=teacher,
        distill_args=distill_args,
        layer_pairs=pairs,
        decoder_layer_pairs=decoder_pairs,
        pooling=pooling,
        callbacks=list(callbacks),
    )
    result = trainer.train(
        resume_from_checkpoint=resume_target(training_args.resume_from_checkpoint, training_args.output_dir)
    )
    metrics = dict(result.metrics)
    if "validation" in encoded:
        metrics.update(trainer.evaluate(encoded["validation"], metric_key_prefix="eval"))
        rows = list(itertools.islice(iter(encoded["validation"]), AGREEMENT_SAMPLES))
        if len(rows) >= 3 and kind != "seq2seq":
            from transformers import DataCollatorWithPadding

            collator = DataCollatorWithPadding(tokenizer)  # unmasked text, whatever the training collator
            vectors = [
                sentence_vectors(model, rows, collator, pooling=pooling) for model in (trainer.model, teacher)
            ]
            metrics.update({f"eval_{k}": v for k, v in embedding_agreement(*vectors).items()})

    corpus = data_args.train_file or data_args.dataset_name
    provenance = dict(getattr(trainer.model.config, "ckadistill", None) or {})
    if model_args.student is not None:  # a further general stage of an earlier student
        provenance = {"started_from": model_args.student, "earlier_stage": provenance}
    trainer.model.config.ckadistill = {
        **provenance,
        "stage": "general",
        "teacher": model_args.teacher,
        "corpus": corpus,
    }

    output_dir = Path(training_args.output_dir)
    trainer.save_model(str(output_dir))
    if trainer.is_world_process_zero():
        is_sentence_model = write_sentence_transformer_files(
            model_args.teacher, output_dir, trainer.model.config.hidden_size
        )
        save_run_files(
            trainer,
            output_dir,
            metrics,
            (model_args, data_args, distill_args, training_args),
            header="ckadistill distill --task general",
            layer_map=(distill_args.layer_map, pairs),
            decoder_layer_map=(distill_args.decoder_layer_map, decoder_pairs) if decoder_pairs else None,
        )
        compression = count_parameters(teacher) / count_parameters(trainer.model)
        tag, usage = _card_usage(kind, is_sentence_model, tokenizer.mask_token)
        write_model_card(
            output_dir,
            model=trainer.model,
            title=f"General-distilled student of {Path(model_args.teacher).name}",
            summary=(
                f"A {compression:.1f}× smaller {'sentence encoder' if is_sentence_model else 'model'} distilled "
                f"from `{model_args.teacher}` on raw text ({corpus}) with ckadistill, before any task "
                "(the first, task-agnostic stage)."
            ),
            metrics=metrics,
            labels=None,
            data={
                "corpus": corpus,
                "text column": data_args.text_column,
                "streamed": data_args.streaming,
                "packed into blocks": data_args.pack_sequences,
                "max length": data_args.max_length,
            },
            training=training_summary(training_args, trainer),
            teacher=teacher,
            teacher_name=model_args.teacher,
            distillation=_distillation_summary(kind, distill_args, layer_map, pooling, objective),
            pipeline_tag=tag,
            usage=usage,
        )
    return metrics
