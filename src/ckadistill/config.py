"""Typed configuration of the commands: dataclasses, YAML presets and flag overrides.

One dataclass per concern, each field with a `help` string, validated in `__post_init__` with errors
that name the flag and the fix. `parse_config` reads an optional YAML file first and then lets
command-line flags override it, through `transformers.HfArgumentParser`; `save_config` writes the
resolved values back as YAML that `parse_config` reads again.

(No `from __future__ import annotations` here: HfArgumentParser reads the field types at run time.)
"""

import dataclasses
import difflib
import inspect
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Union

import torch
import yaml
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments

logger = logging.getLogger(__name__)

HIDDEN_LOSSES = ("cka", "cosine", "mse_proj", "none")
TASK_TYPES = ("auto", "classification", "regression")
TASKS = ("classification", "summarization", "translation", "general")
SEQ2SEQ_TASKS = ("summarization", "translation")


@dataclass
class DataArguments:
    """Where the examples come from and how they become model inputs."""

    task: Literal["classification", "summarization", "translation", "general"] = field(
        default="classification",
        metadata={
            "help": "What the models do: 'classification' (text -> label; regression via --task_type), "
            "'summarization' or 'translation' (source text -> target text, encoder-decoder models), or "
            "'general' (task-agnostic distillation on raw text: masked LMs and bare encoders such as "
            "sentence encoders)."
        },
    )
    dataset_name: str | None = field(
        default=None,
        metadata={"help": "A `datasets` hub name (needs a network), e.g. 'glue'. Files take precedence."},
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Configuration of --dataset_name, e.g. 'sst2'."}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "Training data: .csv, .tsv, .json, .jsonl or .parquet."}
    )
    validation_file: str | None = field(default=None, metadata={"help": "Validation data (same formats)."})
    test_file: str | None = field(default=None, metadata={"help": "Test data (same formats)."})
    text_column: str = field(default="text", metadata={"help": "Column holding the (first) text."})
    text_pair_column: str | None = field(
        default=None,
        metadata={
            "help": "Column holding the second text of a pair task (e.g. NLI); unset for single texts."
        },
    )
    label_column: str = field(
        default="label", metadata={"help": "Column holding the label (string, int or float)."}
    )
    task_type: Literal["auto", "classification", "regression"] = field(
        default="auto",
        metadata={"help": "'auto': float labels mean regression, others classification; or force one."},
    )
    validation_split_fraction: float = field(
        default=0.1,
        metadata={
            "help": "Fraction of the training rows held out for validation when no validation split is given."
        },
    )
    test_split_fraction: float = field(
        default=0.0,
        metadata={"help": "Fraction of the training rows held out for testing when no test split is given."},
    )
    split_seed: int = field(
        default=0, metadata={"help": "Seed of the held-out splits and of --labelled_fraction."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N training rows."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep only the first N rows of the validation and test splits."}
    )
    labelled_fraction: float = field(
        default=1.0,
        metadata={
            "help": "Keep labels on this stratified, seeded fraction of the training rows; the rest get label "
            "-100 (distillation still learns from their text through the teacher; fine-tuning drops them)."
        },
    )
    max_length: int = field(default=128, metadata={"help": "Truncate tokenised inputs to this many tokens."})
    source_column: str = field(
        default="source", metadata={"help": "Column holding the source text (summarization, translation)."}
    )
    target_column: str = field(
        default="target", metadata={"help": "Column holding the target text (summarization, translation)."}
    )
    max_source_length: int = field(
        default=512, metadata={"help": "Truncate tokenised sources to this many tokens (seq2seq tasks)."}
    )
    max_target_length: int = field(
        default=128, metadata={"help": "Truncate tokenised targets to this many tokens (seq2seq tasks)."}
    )
    source_prefix: str | None = field(
        default=None,
        metadata={
            "help": "Text put before every source, e.g. 'summarize: ' for T5 (default: none; T5 teachers "
            "get their task prefix from their config when it has one)."
        },
    )
    source_lang: str | None = field(
        default=None,
        metadata={"help": "Source language code of multilingual tokenizers, e.g. 'en_XX' (mBART) or 'en'."},
    )
    target_lang: str | None = field(
        default=None,
        metadata={
            "help": "Target language code, e.g. 'ro_RO' (mBART); also forces it as the first generated token "
            "where the model family expects that (mBART-50)."
        },
    )
    train_windows: int = field(
        default=1,
        metadata={
            "help": "Classification on long texts: read up to N windows of --max_length tokens from each "
            "training text (the first, then the tokens after it), each a training row with the text's label. "
            "Evaluation and inference read the first window, as before; 1 keeps only the first."
        },
    )
    augment: int = field(
        default=0,
        metadata={
            "help": "Distillation from little data (--task classification): add N perturbed copies of every "
            "training text (tokens masked, replaced by corpus tokens, or a span deleted), without gold "
            "labels, so only the teacher supervises them; pairs well with --cache_teacher."
        },
    )
    augment_rate: float = field(
        default=0.15, metadata={"help": "Fraction of a text's tokens one perturbation touches (--augment)."}
    )
    augment_ops: str = field(
        default="mask,replace,delete",
        metadata={"help": "Perturbations --augment draws from, comma-separated: mask, replace, delete."},
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "--task general: read the training corpus lazily (files or hub datasets larger than memory), "
            "shuffled through a --shuffle_buffer; needs --max_steps, since a stream has no length."
        },
    )
    shuffle_buffer: int = field(
        default=10000, metadata={"help": "Rows in the shuffle buffer of a --streaming corpus."}
    )
    pack_sequences: bool = field(
        default=False,
        metadata={
            "help": "--task general: concatenate consecutive documents and cut them into full --max_length "
            "blocks (short documents waste no padding); leave off for sentence encoders, whose pooled "
            "vector should be one sentence's."
        },
    )
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for tokenisation."}
    )
    data_cache_dir: str | None = field(
        default=None, metadata={"help": "Cache folder of `datasets` (default: its own)."}
    )

    @property
    def augment_op_names(self) -> list[str]:
        """`--augment_ops` as a list of names."""
        return [op.strip() for op in self.augment_ops.split(",") if op.strip()]

    @property
    def is_seq2seq(self) -> bool:
        """Whether the task maps a source text to a target text (an encoder-decoder model)."""
        return self.task in SEQ2SEQ_TASKS

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"--task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name in ("validation_split_fraction", "test_split_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"--{name} must be in [0, 1), got {value}")
        if self.validation_split_fraction + self.test_split_fraction >= 1.0:
            raise ValueError(
                "--validation_split_fraction + --test_split_fraction must leave some training rows, got "
                f"{self.validation_split_fraction} + {self.test_split_fraction}"
            )
        if not 0.0 < self.labelled_fraction <= 1.0:
            raise ValueError(f"--labelled_fraction must be in (0, 1], got {self.labelled_fraction}")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name} must be >= 1 (or unset for all rows), got {value}")
        if self.train_windows < 1:
            raise ValueError(
                f"--train_windows must be at least 1 (the first window), got {self.train_windows}"
            )
        if self.train_windows > 1 and self.task != "classification":
            raise ValueError("--train_windows splits classification texts; drop it for --task " + self.task)
        if self.train_windows > 1 and self.text_pair_column:
            raise ValueError(
                "--train_windows splits single texts; a pair task (--text_pair_column) reads each pair whole: "
                "drop --train_windows"
            )
        if self.augment < 0:
            raise ValueError(f"--augment must be >= 0 copies per text, got {self.augment}")
        if self.augment and self.task != "classification":
            raise ValueError("--augment perturbs classification texts; drop it for --task " + self.task)
        if not 0.0 < self.augment_rate < 1.0:
            raise ValueError(f"--augment_rate must be in (0, 1), got {self.augment_rate}")
        ops = self.augment_op_names
        unknown = sorted(set(ops) - {"mask", "replace", "delete"})
        if not ops or unknown:
            raise ValueError(
                f"--augment_ops must list some of mask, replace, delete (comma-separated), got {self.augment_ops!r}"
            )
        if self.shuffle_buffer < 1:
            raise ValueError(f"--shuffle_buffer must be >= 1 row, got {self.shuffle_buffer}")
        if self.streaming and self.task != "general":
            raise ValueError("--streaming reads raw text for --task general only; drop it for this task")
        if self.max_length < 2:
            raise ValueError(f"--max_length must be >= 2 tokens, got {self.max_length}")
        for name in ("max_source_length", "max_target_length"):
            if getattr(self, name) < 2:
                raise ValueError(f"--{name} must be >= 2 tokens, got {getattr(self, name)}")
        if self.source_column == self.target_column:
            raise ValueError(f"--source_column and --target_column must differ (both {self.source_column!r})")
        if self.text_pair_column is not None and self.text_pair_column == self.text_column:
            raise ValueError(f"--text_pair_column must differ from --text_column (both {self.text_column!r})")


@dataclass
class DistillModelArguments:
    """The teacher, and the student: an existing model directory or one built from the teacher."""

    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Directory (or hub name) of the fine-tuned teacher: a sequence classifier, or an encoder-decoder "
            "for --task summarization / translation (required)."
        },
    )
    student: str | None = field(
        default=None,
        metadata={
            "help": "Directory of an existing student (a classifier with the teacher's labels, or a pretrained "
            "encoder that gets a new head); leave unset to build one from the teacher (--student_*)."
        },
    )
    student_hidden_size: int | None = field(default=None, metadata={"help": "Width of a built student."})
    student_layers: int | None = field(
        default=None, metadata={"help": "Number of layers of a built student."}
    )
    student_encoder_layers: int | None = field(
        default=None,
        metadata={"help": "Encoder layers of a built encoder-decoder student (default: --student_layers)."},
    )
    student_decoder_layers: int | None = field(
        default=None,
        metadata={"help": "Decoder layers of a built encoder-decoder student (default: --student_layers)."},
    )
    student_ffn_size: int | None = field(
        default=None, metadata={"help": "Feed-forward size of a built student."}
    )
    student_heads: int | None = field(default=None, metadata={"help": "Attention heads of a built student."})
    student_init: str = field(
        default="slice",
        metadata={
            "help": "Initialisation of a built student: 'slice' (the paper: top-left blocks of teacher weights), "
            "'random', 'copy' (alternate teacher layers, same width) or 'pca' (teacher's principal directions)."
        },
    )
    tokenizer_name: str | None = field(
        default=None,
        metadata={"help": "Tokenizer to use (default: the teacher's); teacher and student share it."},
    )
    trim_vocab: bool = field(
        default=False,
        metadata={
            "help": "Give the student only the vocabulary of the training texts (classification: the text "
            "columns; summarization / translation: sources and targets): special tokens, the tokens those "
            "texts produce and the pieces unseen text needs (see `ckadistill trim-vocab`). The student and "
            "its saved tokenizer hold the kept tokens only; the teacher keeps its vocabulary and reads the "
            "same tokens by their ids in it."
        },
    )
    trim_min_count: int = field(
        default=1,
        metadata={"help": "With --trim_vocab: keep a training token only if it occurs at least this often."},
    )
    trim_keep_top: int | None = field(
        default=None,
        metadata={
            "help": "With --trim_vocab: at most this many tokens in all; special tokens and fallback pieces "
            "first, then the most frequent training tokens that fit (default: every token passing "
            "--trim_min_count)."
        },
    )

    def shape_flags(self) -> dict[str, int]:
        """The `--student_*` shape values that were set, keyed by flag name."""
        shape = {
            "student_hidden_size": self.student_hidden_size,
            "student_layers": self.student_layers,
            "student_encoder_layers": self.student_encoder_layers,
            "student_decoder_layers": self.student_decoder_layers,
            "student_ffn_size": self.student_ffn_size,
            "student_heads": self.student_heads,
        }
        return {name: value for name, value in shape.items() if value is not None}

    def __post_init__(self):
        if not self.teacher:
            raise ValueError("--teacher is required: the directory of a fine-tuned teacher model")
        for name, value in self.shape_flags().items():
            if value < 1:
                raise ValueError(f"--{name} must be >= 1, got {value}")
        if self.student is not None and self.shape_flags():
            raise ValueError(
                f"--student {self.student} is an existing model, so {', '.join('--' + n for n in self.shape_flags())} "
                "cannot apply: drop --student to build a student from the teacher, or drop the shape flags"
            )
        if self.student is None and not self.shape_flags():
            raise ValueError(
                "no student given: pass --student PATH, or build one from the teacher with at least one of "
                "--student_layers, --student_encoder_layers, --student_decoder_layers, --student_hidden_size, "
                "--student_ffn_size, --student_heads"
            )
        if self.trim_min_count < 1:
            raise ValueError(f"--trim_min_count must be >= 1 occurrence, got {self.trim_min_count}")
        if self.trim_keep_top is not None and self.trim_keep_top < 1:
            raise ValueError(f"--trim_keep_top must be >= 1 token (or unset), got {self.trim_keep_top}")
        if not self.trim_vocab:
            given = [
                flag
                for flag, value, default in (
                    ("--trim_min_count", self.trim_min_count, 1),
                    ("--trim_keep_top", self.trim_keep_top, None),
                )
                if value != default
            ]
            if given:
                raise ValueError(
                    f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} only to a trimmed student: add "
                    "--trim_vocab true, or drop "
                    f"{' and '.join(given)}"
                )


@dataclass
class FinetuneModelArguments:
    """The model to fine-tune into a teacher (a classifier, or an encoder-decoder for seq2seq tasks)."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Base model or checkpoint directory (or hub name) to fine-tune (required)."},
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer (default: the model's)."})
    freeze_layers: int = field(
        default=0,
        metadata={
            "help": "Fine-tune only the top of a BERT-like classifier: keep the embeddings and the bottom N "
            "encoder layers fixed (0 = train everything). Steps get cheaper, since the backward pass stops "
            "at layer N+1."
        },
    )
    fresh_lr_multiplier: float = field(
        default=1.0,
        metadata={
            "help": "Learning-rate multiplier for the parameters the checkpoint did not contain, e.g. bert2bert "
            "cross-attention (seq2seq tasks; 1 = one rate for all). Fresh parameters are found by name: every "
            "`crossattention` weight and the decoder's LM-head transform and bias (`decoder.cls.predictions`)."
        },
    )

    def __post_init__(self):
        if not self.model_name_or_path:
            raise ValueError("--model_name_or_path is required: the base model or checkpoint to fine-tune")
        if self.freeze_layers < 0:
            raise ValueError(f"--freeze_layers must be >= 0 (0 trains every layer), got {self.freeze_layers}")
        if not self.fresh_lr_multiplier > 0:
            raise ValueError(
                f"--fresh_lr_multiplier must be > 0 (1 = one learning rate for all), got {self.fresh_lr_multiplier}"
            )


@dataclass
class DistillArguments:
    """What the student learns from: labels, teacher logits and matched hidden states."""

    alpha_task: float = field(
        default=1.0, metadata={"help": "Weight of the task loss on labels (CE, or MSE for regression)."}
    )
    alpha_kd: float = field(
        default=1.0,
        metadata={"help": "Weight of the logit distillation loss (KL at --temperature, MSE for regression)."},
    )
    alpha_hidden: float = field(
        default=1.0, metadata={"help": "Weight of the hidden-state loss over the layer-map pairs."}
    )
    temperature: float = field(
        default=1.0, metadata={"help": "Softmax temperature of the KL term (scaled by T²)."}
    )
    kd_reverse: bool = field(default=False, metadata={"help": "Use the reverse KL(p_student || p_teacher)."})
    hidden_loss: Literal["cka", "cosine", "mse_proj", "none"] = field(
        default="cka",
        metadata={
            "help": "Hidden-state loss per pair: 'cka' (1 - linear CKA, any widths), 'cosine' (DistilBERT, "
            "equal widths), 'mse_proj' (TinyBERT, learned projection), 'none'."
        },
    )
    layer_map: str = field(
        default="uniform",
        metadata={
            "help": "Student:teacher hidden-state pairs: uniform | distilbart | last | none | '0:0,1:2,2:4'."
        },
    )
    decoder_layer_map: str = field(
        default="uniform",
        metadata={
            "help": "Decoder pairs of encoder-decoder models, same syntax as --layer_map (which then maps the "
            "encoder); ignored by encoder-only models unless set to explicit pairs."
        },
    )
    kd_chunk_size: int = field(
        default=4096,
        metadata={
            "help": "Token-level KL is computed over at most this many target positions at a time, so B·T·V "
            "fp32 copies of the logits are never all alive (large vocabularies such as mBART's 250k)."
        },
    )
    hidden_reduction: Literal["sum", "mean"] = field(
        default="sum",
        metadata={"help": "Combine the per-pair losses by 'sum' (the paper: weight 1 per pair) or 'mean'."},
    )
    hidden_level: Literal["token", "sequence"] = field(
        default="token",
        metadata={
            "help": "Compare hidden states per 'token' (every real token of the batch is a row; the paper) or "
            "per 'sequence' (each example's mean over its real tokens is a row)."
        },
    )
    hidden_schedule: Literal["constant", "linear_decay"] = field(
        default="constant",
        metadata={
            "help": "Weight of the hidden term over training: 'constant' (--alpha_hidden throughout) or "
            "'linear_decay' (from --alpha_hidden at the first step to 0 at the last)."
        },
    )
    alpha_pooled: float = field(
        default=1.0,
        metadata={
            "help": "Weight of the sentence-vector loss of bare encoders (task-agnostic distillation of a "
            "model without a head, such as a sentence encoder): pooled student vs teacher last states."
        },
    )
    pooled_loss: Literal["auto", "cka", "cosine", "none"] = field(
        default="auto",
        metadata={
            "help": "Sentence-vector loss of bare encoders: 'cka' (1 - CKA across the batch's pooled vectors, any "
            "widths), 'cosine' (1 - cosine per sentence, equal widths), 'auto' (cosine when the widths "
            "match, else cka) or 'none'."
        },
    )
    mlm_probability: float = field(
        default=0.0,
        metadata={
            "help": "Task-agnostic distillation of a masked LM: 0 = the text stays unmasked and KL acts at every "
            "real token (the paper); > 0 = mask this fraction of tokens as BERT does, CE and KL at those only."
        },
    )
    seq2seq_objective: Literal["auto", "reconstruction", "infilling", "span_corruption"] = field(
        default="auto",
        metadata={
            "help": "Task-agnostic distillation of an encoder-decoder: 'reconstruction' (the clean text is source "
            "and target; the paper), 'infilling' (BART: spans of the source become one mask token each), "
            "'span_corruption' (T5: spans become sentinels, the target lists them); 'auto' = span_corruption "
            "for T5, reconstruction otherwise."
        },
    )
    noise_density: float = field(
        default=0.15, metadata={"help": "Fraction of tokens corrupted by infilling or span_corruption."}
    )
    mean_noise_span: float = field(
        default=3.0, metadata={"help": "Mean length, in tokens, of a corrupted span."}
    )
    cka_sqrt: bool = field(
        default=False,
        metadata={
            "help": "Minimise 1 - sqrt(CKA) (the authors' code) instead of 1 - CKA (bounded gradient)."
        },
    )
    cka_scope: Literal["local", "global"] = field(
        default="local",
        metadata={
            "help": "With several processes: 'local' = each process's CKA over its own micro-batch (DDP averages "
            "them); 'global' = one CKA over the real tokens of every process's micro-batch, gathered with "
            "their gradients (the CKA of the global batch; costs one all-gather per layer pair)."
        },
    )
    cka_max_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Compute each layer pair's CKA (loss and logged value) on at most N real tokens per "
            "micro-batch, drawn at random each step, the same tokens for every pair of a stack. CKA's cost "
            "grows linearly with tokens, so this caps it, at the price of a noisier estimate; unset = every "
            "real token (the exact CKA of the micro-batch)."
        },
    )
    stop_on_nan: bool = field(
        default=True,
        metadata={
            "help": "Stop at the first non-finite training loss, naming the bad components (task, kd, which "
            "layer pair) and the step; the last good checkpoint is kept."
        },
    )
    cache_teacher: bool = field(
        default=False,
        metadata={
            "help": "Run the teacher once over the training set and replay its logits and mapped hidden states "
            "every epoch (exact up to fp16 storage, as the teacher is frozen; much faster for small students). "
            "Memory: about tokens × teacher width × mapped teacher layers × 2 bytes, plus for encoder-decoders "
            "target tokens × (vocabulary + decoder width × mapped decoder layers) × 2 bytes. The targets must "
            "be the same every epoch."
        },
    )
    cache_teacher_dir: str | None = field(
        default=None,
        metadata={
            "help": "With --cache_teacher: also keep the teacher's outputs in this folder, under a digest of the "
            "teacher's weights, the training rows and the layers, so later runs on the same three (other "
            "seeds or student shapes, a resumed run) read them instead of running the teacher again; a run "
            "started while another computes the same file waits for it."
        },
    )
    cache_teacher_max_gb: float = field(
        default=8.0,
        metadata={"help": "Refuse --cache_teacher when the cache would exceed this many GiB."},
    )

    def __post_init__(self):
        for name in ("alpha_task", "alpha_kd", "alpha_hidden"):
            value = getattr(self, name)
            if not value >= 0:  # NaN fails too
                raise ValueError(f"--{name} must be >= 0, got {value}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {self.temperature}")
        if self.kd_chunk_size < 1:
            raise ValueError(f"--kd_chunk_size must be >= 1 position, got {self.kd_chunk_size}")
        if not self.alpha_pooled >= 0:
            raise ValueError(f"--alpha_pooled must be >= 0, got {self.alpha_pooled}")
        if self.cache_teacher_dir and not self.cache_teacher:
            raise ValueError("--cache_teacher_dir keeps the teacher cache on disk: add --cache_teacher true")
        if self.cka_scope not in ("local", "global"):
            raise ValueError(f"--cka_scope must be local or global, got {self.cka_scope!r}")
        if self.cka_max_tokens is not None and self.cka_max_tokens < 2:
            raise ValueError(
                f"--cka_max_tokens must be at least 2 (CKA compares two or more tokens), got {self.cka_max_tokens}; "
                "leave it unset to use every real token"
            )
        if self.pooled_loss not in ("auto", "cka", "cosine", "none"):
            raise ValueError(f"--pooled_loss must be auto, cka, cosine or none, got {self.pooled_loss!r}")
        if not 0.0 <= self.mlm_probability < 1.0:
            raise ValueError(
                f"--mlm_probability must be in [0, 1) (0 = no masking), got {self.mlm_probability}"
            )
        if self.seq2seq_objective not in ("auto", "reconstruction", "infilling", "span_corruption"):
            raise ValueError(
                "--seq2seq_objective must be auto, reconstruction, infilling or span_corruption, got "
                f"{self.seq2seq_objective!r}"
            )
        if not 0.0 < self.noise_density < 1.0:
            raise ValueError(f"--noise_density must be in (0, 1), got {self.noise_density}")
        if not self.mean_noise_span >= 1.0:
            raise ValueError(f"--mean_noise_span must be >= 1 token, got {self.mean_noise_span}")
        if not self.cache_teacher_max_gb > 0:
            raise ValueError(f"--cache_teacher_max_gb must be > 0, got {self.cache_teacher_max_gb}")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise ValueError(
                f"--hidden_loss must be one of {', '.join(HIDDEN_LOSSES)}, got {self.hidden_loss!r}"
            )
        if self.hidden_reduction not in ("sum", "mean"):
            raise ValueError(f"--hidden_reduction must be 'sum' or 'mean', got {self.hidden_reduction!r}")
        if self.hidden_level not in ("token", "sequence"):
            raise ValueError(f"--hidden_level must be 'token' or 'sequence', got {self.hidden_level!r}")
        if self.hidden_schedule not in ("constant", "linear_decay"):
            raise ValueError(
                f"--hidden_schedule must be 'constant' or 'linear_decay', got {self.hidden_schedule!r}"
            )
        from ckadistill.layer_maps import check_layer_map_syntax

        for name in ("layer_map", "decoder_layer_map"):
            try:
                check_layer_map_syntax(getattr(self, name))
            except ValueError as err:
                raise ValueError(f"--{name}: {err}") from err
        no_pairs = self.layer_map.strip().lower() == "none"
        if self.hidden_loss != "none" and no_pairs and self.alpha_hidden > 0:
            raise ValueError(
                f"--layer_map none matches no layers, so --hidden_loss {self.hidden_loss} has nothing to compare: "
                "set --hidden_loss none (or --alpha_hidden 0), or choose a layer map such as 'uniform'"
            )
        uses_hidden = self.hidden_loss != "none" and self.alpha_hidden > 0
        if self.alpha_task == 0 and self.alpha_kd == 0 and not uses_hidden:
            raise ValueError(
                "every loss term is off: set --alpha_task, --alpha_kd or --alpha_hidden (with a --hidden_loss) above 0"
            )

    @property
    def uses_hidden(self) -> bool:
        """Whether a hidden-state term enters the loss."""
        return (
            self.hidden_loss != "none" and self.alpha_hidden > 0 and self.layer_map.strip().lower() != "none"
        )

    @classmethod
    def seq2seq_paper(cls, hidden_loss: str = "cka", **overrides) -> "DistillArguments":
        """The paper's encoder-decoder weighting: 0.2·CE + 0.8·KL + Σ hidden loss over the uniform encoder
        and decoder pairs, one term per pair (configs/summarization_cka.yaml); `hidden_loss="none"` drops
        the hidden term."""
        values = dict(
            alpha_task=0.2,
            alpha_kd=0.8,
            alpha_hidden=0.0 if hidden_loss == "none" else 1.0,
            hidden_loss=hidden_loss,
            hidden_reduction="sum",
            layer_map="uniform",
            decoder_layer_map="uniform",
        )
        return cls(**{**values, **overrides})


@dataclass
class TaskTrainingArguments(Seq2SeqTrainingArguments):
    """`Seq2SeqTrainingArguments` with defaults suited to short distillation runs (all other fields
    unchanged). The seq2seq fields (`predict_with_generate`, ...) are inert for classification."""

    output_dir: str | None = field(default="outputs/model", metadata={"help": "Where the model is written."})
    learning_rate: float = field(
        default=1e-4, metadata={"help": "Peak AdamW learning rate (the paper's task rate)."}
    )
    per_device_train_batch_size: int = field(default=16, metadata={"help": "Training batch size per device."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Evaluation batch size per device."}
    )
    num_train_epochs: float = field(
        default=3.0, metadata={"help": "Training epochs (overridden by --max_steps)."}
    )
    logging_steps: float = field(default=10, metadata={"help": "Log the losses every N optimiser steps."})
    eval_strategy: str = field(
        default="epoch", metadata={"help": "When to evaluate: 'no', 'steps' or 'epoch'."}
    )
    save_strategy: str = field(
        default="epoch", metadata={"help": "When to checkpoint: 'no', 'steps', 'epoch' or 'best'."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints."})
    report_to: str | None = field(
        default="none", metadata={"help": "Logging backends: 'none', 'tensorboard', 'wandb', ... or 'all'."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write into an --output_dir that already holds files (files of the same name are replaced; "
            "nothing else is deleted). Without it such a folder is refused before any work."
        },
    )

    def __post_init__(self):
        for name in ("logging_steps", "eval_steps", "save_steps", "warmup_steps"):
            value = getattr(self, name)  # TrainingArguments turns these into step counts with int()
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(
                    f"--{name} must be a finite number (a count of steps, or a fraction of the run below 1), "
                    f"got {value}"
                )
        super().__post_init__()
        # Pinned memory only speeds up copies to an accelerator; without one torch warns on every loader.
        if self.dataloader_pin_memory and (self.use_cpu or not torch.accelerator.is_available()):
            self.dataloader_pin_memory = False


ClassificationTrainingArguments = TaskTrainingArguments  # the name earlier scripts import


@dataclass
class GenerationArguments:
    """How encoder-decoder models generate when they are evaluated (summarization, translation)."""

    num_beams: int = field(default=1, metadata={"help": "Beam size (1 = greedy decoding)."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest generated output, in tokens."})
    length_penalty: float = field(
        default=1.0, metadata={"help": "Beam-search length penalty (> 1 favours longer outputs)."}
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "Forbid repeating any n-gram of this size (0 = off)."}
    )
    generation_batch_size: int = field(default=16, metadata={"help": "Examples per generate() call."})
    eval_generation_samples: int | None = field(
        default=None,
        metadata={
            "help": "Generate for only the first N validation rows when evaluating during training (keeps "
            "epochs cheap); the final scores use the whole split."
        },
    )

    def __post_init__(self):
        for name in ("num_beams", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if math.isnan(self.length_penalty):
            raise ValueError("--length_penalty must be a number, got nan")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"--no_repeat_ngram_size must be >= 0, got {self.no_repeat_ngram_size}")
        if self.eval_generation_samples is not None and self.eval_generation_samples < 1:
            raise ValueError(
                f"--eval_generation_samples must be >= 1 (or unset for all rows), got {self.eval_generation_samples}"
            )

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate`."""
        kwargs: dict[str, Any] = {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens}
        if self.num_beams > 1:
            kwargs["length_penalty"] = self.length_penalty
        if self.no_repeat_ngram_size:
            kwargs["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return kwargs


# ---------------------------------------------------------------------------------------------------
# YAML file + command-line flags.
# ---------------------------------------------------------------------------------------------------


def _init_field_names(dataclass_types: tuple[type, ...]) -> set[str]:
    return {f.name for dtype in dataclass_types for f in dataclasses.fields(dtype) if f.init}


def load_yaml_config(path: str | Path, dataclass_types: tuple[type, ...]) -> dict[str, Any]:
    """Read a flat YAML mapping of flag names to values and check every key belongs to a dataclass.

    Raises:
        ValueError: the file is missing, not a mapping, or has a key no dataclass knows (with the
            closest known names as a hint).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist (pass a YAML file as the first argument)")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    except yaml.YAMLError as err:
        raise ValueError(f"config file {path} is not valid YAML: {err}") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {path} must hold a mapping of flag names to values, got {type(values).__name__}"
        )
    known = _init_field_names(dataclass_types)
    unknown = sorted(set(values) - known, key=repr)  # YAML keys may be numbers, dates, null
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), known, n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"unknown key(s) in {path}: {', '.join(hints)}")
    declared = _declared_types(dataclass_types)
    return {key: _check_yaml_value(path, key, value, declared[key]) for key, value in values.items()}


def _declared_types(dataclass_types: tuple[type, ...]) -> dict[str, list[Any]]:
    """Each init field's type as every dataclass in its MRO declares it, most derived first (a subclass may
    narrow a type its base accepts: `TaskTrainingArguments.report_to` is a string, saved as a list)."""
    declared: dict[str, list[Any]] = {}
    for dtype in dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        for klass in dtype.__mro__:
            own = [name for name in inspect.get_annotations(klass) if name in names]
            if own:
                hints = typing.get_type_hints(klass)
                for name in own:
                    declared.setdefault(name, []).append(hints[name])
    return declared


def _fits(value: Any, hint: Any) -> bool:
    """Whether a YAML value can stand for a field of type `hint`. Strings stand for numbers and booleans
    (argparse converts string defaults as it converts flags, and rejects bad ones)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        return any(_fits(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is Literal:
        return isinstance(value, str) and value in args
    if isinstance(hint, type) and issubclass(hint, Enum):
        return isinstance(value, hint) or value in [member.value for member in hint]
    if hint in (bool, int, float) and isinstance(value, str):
        return True
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        return isinstance(value, str) or (
            isinstance(value, list) and all(_fits(item, args[0]) for item in value) if args else True
        )
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union or origin is types.UnionType:
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if isinstance(hint, type) and issubclass(hint, Enum):
        return "one of " + ", ".join(str(member.value) for member in hint)
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "a list" if origin is list else "a mapping" if origin is dict else str(hint))


def _check_yaml_value(path: Path, key: str, value: Any, hints: list[Any]) -> Any:
    """The value, checked against the field's declared types (and an integer made a float for a float
    field), or a ValueError naming the key. HfArgumentParser does not check defaults itself."""
    if not any(_fits(value, hint) for hint in hints):
        shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
        advice = f" (quote it in YAML: {key}: '...')" if _takes_text(hints[0]) and value is not None else ""
        raise ValueError(
            f"config file {path}: {key} (--{key}) must be {_describe(hints[0])}, got {type(value).__name__} "
            f"{shown}{advice}"
        )
    if isinstance(value, int) and not isinstance(value, bool) and not _fits(value, _without_float(hints[0])):
        try:
            return float(value)
        except OverflowError:
            raise ValueError(
                f"config file {path}: {key} (--{key}) is a {len(str(abs(value)))}-digit integer, too large "
                "for a number"
            ) from None
    return value


def _takes_text(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin is Union or origin is types.UnionType:
        return str in typing.get_args(hint)
    return hint is str


def _without_float(hint: Any) -> Any:
    """`hint` with `float` taken out, to tell whether an integer needs making a float."""
    if typing.get_origin(hint) is Union or typing.get_origin(hint) is types.UnionType:
        kept = tuple(arg for arg in typing.get_args(hint) if arg is not float)
        return Union[kept] if kept else type(None)  # noqa: UP007 - built at run time
    return type(None) if hint is float else hint


def parse_config(
    dataclass_types: tuple[type, ...], argv: list[str], *, prog: str, description: str | None = None
) -> tuple[Any, ...]:
    """Parse `[CONFIG.yaml] [--flag value ...]` into one instance of each dataclass.

    The YAML values become the parser's defaults, so any flag given on the command line overrides
    them; `__post_init__` validation runs once, on the merged values.
    """
    config_path, flags = (argv[0], argv[1:]) if argv and not argv[0].startswith("-") else (None, list(argv))
    parser = HfArgumentParser(
        dataclass_types, prog=prog, usage=f"{prog} [CONFIG.yaml] [--flag value ...]", description=description
    )
    if config_path is not None:
        parser.set_defaults(**load_yaml_config(config_path, dataclass_types))
    return tuple(parser.parse_args_into_dataclasses(args=flags, look_for_args_file=False))


def config_to_dict(*configs: Any) -> dict[str, Any]:
    """The flat `{flag: value}` mapping of several dataclass instances (as `parse_config` reads it back).

    Secrets (`*_token` fields) are left out; enums become their values.
    """
    out: dict[str, Any] = {}
    for config in configs:
        if isinstance(config, TrainingArguments):
            values = config.to_dict()
        else:
            values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
        out.update({k: v for k, v in values.items() if not k.endswith("_token")})
    return out


def save_config(path: str | Path, *configs: Any, header: str = "") -> Path:
    """Write the resolved configuration as YAML; `ckadistill <command> path` reproduces the run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(*configs), sort_keys=False, allow_unicode=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    path.write_text(comment + text, encoding="utf-8")
    return path
