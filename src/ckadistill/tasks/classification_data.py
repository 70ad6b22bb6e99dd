"""Classification data: label spaces, the low-label regime, tokenisation of text (pairs).

The flow, as the entry points use it:

    raw = load_raw_splits(data_args)                       # ckadistill.data: splits, columns checked
    labels = resolve_label_space(raw, data_args, teacher.config)
    encoded = encode_splits(raw, data_args, tokenizer, labels, unlabelled="keep")

Every problem with the data is raised before any training starts, naming the flag that fixes it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from ckadistill.config import DataArguments

logger = logging.getLogger(__name__)

UNLABELLED = -100  # label of a row only the teacher supervises (ignored by the task loss)
MAX_CLASS_ID = 1_000_000  # integer labels are class ids; a larger one is a data error, not a real head


# ---------------------------------------------------------------------------------------------------
# Labels.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelSpace:
    """The task and its class names (`names[i]` is class id `i`; empty for regression)."""

    task: Literal["classification", "regression"]
    names: tuple[str, ...] = ()

    @property
    def num_labels(self) -> int:
        return 1 if self.task == "regression" else len(self.names)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    def model_config_kwargs(self) -> dict:
        """Keyword arguments for `AutoConfig` / `from_pretrained` that set up the matching head."""
        if self.task == "regression":
            return {"num_labels": 1, "problem_type": "regression"}
        return {
            "num_labels": self.num_labels,
            "id2label": self.id2label,
            "label2id": self.label2id,
            "problem_type": "single_label_classification",
        }


def has_named_labels(config: PretrainedConfig) -> bool:
    """False when a config carries only the placeholder names `LABEL_0, LABEL_1, ...`."""
    return any(name != f"LABEL_{i}" for i, name in config.id2label.items())


def _label_kind(raw: DatasetDict, column: str) -> str:
    """'string', 'int' (class ids) or 'float', from the column's feature type in the first split."""
    from datasets import ClassLabel, Value

    feature = raw[next(iter(raw))].features[column]
    if isinstance(feature, ClassLabel):
        return "int"
    if not isinstance(feature, Value):
        # lists, dicts, or (`Json`) values of several types in one column
        raise ValueError(
            f"--label_column {column} holds {type(feature).__name__} values, not one string, integer or float "
            "label per row: give every row a label of one type"
        )
    dtype = feature.dtype
    if dtype.startswith("float"):
        return "float"
    if dtype.startswith(("int", "uint", "bool")):
        return "int"
    return "string"


def _class_label_names(raw: DatasetDict, column: str) -> tuple[str, ...] | None:
    """The names a hub dataset attaches to integer labels (`ClassLabel`), if any."""
    from datasets import ClassLabel

    feature = raw[next(iter(raw))].features[column]
    return tuple(feature.names) if isinstance(feature, ClassLabel) else None


def resolve_label_space(
    raw: DatasetDict, data_args: DataArguments, model_config: PretrainedConfig | None = None
) -> LabelSpace:
    """Decide classification vs regression and the class names.

    Args:
        raw: the splits from `load_raw_splits`.
        data_args: `task_type` and `label_column` are read.
        model_config: the config of an already trained classifier (a teacher, a model to evaluate),
            whose task and label names the data must follow; `None` derives everything from the
            data (fine-tuning a base model): string labels sorted, integer labels used as ids.

    Raises:
        ValueError: a data label the model does not know, negative integer labels, or a class count
            that does not match the model.
    """
    column = data_args.label_column
    kind = _label_kind(raw, column)
    task = data_args.task_type
    if task == "auto" and model_config is not None:
        regression = model_config.problem_type == "regression" or model_config.num_labels == 1
        task = "regression" if regression else "classification"
    elif task == "auto":
        task = "regression" if kind == "float" else "classification"
    if task == "regression":
        if kind == "string":
            raise ValueError(f"--label_column {column} holds strings, which cannot be regression targets")
        return LabelSpace("regression")

    values = sorted({v for split in raw.values() for v in split.unique(column)}, key=str)
    if any(v is None or (isinstance(v, float) and not math.isfinite(v)) for v in values):
        raise ValueError(
            f"--label_column {column} has empty (or NaN / infinite) cells: every row of every split needs a label"
        )
    if model_config is not None and has_named_labels(model_config):
        names = tuple(model_config.id2label[i] for i in range(model_config.num_labels))
        if kind == "string":
            unknown = [v for v in values if v not in names]
            if unknown:
                raise ValueError(
                    f"labels {unknown} in --label_column {column} are not among the model's labels {list(names)}; "
                    "use data with the teacher's label set (or fine-tune a teacher on this data)"
                )
    elif kind == "string":
        names = tuple(str(v) for v in values)
    elif _class_label_names(raw, column):
        names = _class_label_names(raw, column)
    else:
        ints = [int(v) for v in values]
        if min(ints) < 0 or any(v != int(v) for v in values):
            raise ValueError(
                f"integer labels in --label_column {column} must be class ids >= 0, got {values[:10]}; "
                "use string labels or --task_type regression"
            )
        if max(ints) >= MAX_CLASS_ID:
            raise ValueError(
                f"integer labels in --label_column {column} are class ids, so label {max(ints)} would make a "
                f"{max(ints) + 1}-way classifier; number the classes 0..K-1 or use string labels"
            )
        names = tuple(str(i) for i in range(max(ints) + 1))
    if kind != "string":
        top = max(int(v) for v in values)
        if top >= len(names) or min(int(v) for v in values) < 0:
            raise ValueError(
                f"label ids in --label_column {column} must lie in [0, {len(names)}), got {values[:10]}"
            )
    if model_config is not None and model_config.num_labels != len(names):
        raise ValueError(
            f"the data has {len(names)} classes but the model has {model_config.num_labels} outputs; "
            "use data with the teacher's label set"
        )
    if len(names) < 2:
        raise ValueError(
            f"classification needs at least 2 classes; --label_column {column} holds {list(names)}"
        )
    return LabelSpace("classification", names)


def labelled_rows(labels: np.ndarray, fraction: float, seed: int, *, stratify: bool = True) -> np.ndarray:
    """Which rows keep their label in the low-label regime: a seeded fraction of every class.

    Args:
        labels: `(N,)` class ids (or regression targets with `stratify=False`).
        fraction: in (0, 1]; each class keeps `round(fraction · n_class)` rows, at least one.
        seed: the same seed picks the same rows.
        stratify: sample per class (classification) or over all rows at once (regression).

    Returns:
        `(N,)` boolean mask, True = labelled.
    """
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    groups = (
        [np.flatnonzero(labels == c) for c in np.unique(labels)] if stratify else [np.arange(len(labels))]
    )
    for rows in groups:
        count = min(len(rows), max(1, round(fraction * len(rows))))
        keep[rng.choice(rows, size=count, replace=False)] = True
    return keep


# ---------------------------------------------------------------------------------------------------
# Encoding.
# ---------------------------------------------------------------------------------------------------


def encode_splits(
    raw: DatasetDict,
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    labels: LabelSpace,
    *,
    unlabelled: Literal["keep", "drop"] = "keep",
) -> DatasetDict:
    """Cap sample counts, map labels to ids, apply `--labelled_fraction`, and tokenise.

    Args:
        unlabelled: what happens to training rows outside `--labelled_fraction`: `"keep"` them with
            label -100 (distillation: the teacher still supervises them) or `"drop"` them (fine-tuning).

    Returns:
        Splits with `input_ids`, `attention_mask` (and `token_type_ids` where the tokenizer makes them)
        and `labels` (int64 class ids, or float32 targets for regression).
    """
    from datasets import DatasetDict

    column, label2id = data_args.label_column, labels.label2id
    kind = _label_kind(raw, column)
    out = {}
    for split, dataset in raw.items():
        cap = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
        if cap is not None and cap < len(dataset):
            dataset = dataset.select(range(cap))

        if labels.task == "regression":
            targets = np.asarray(dataset[column], dtype=np.float32)
        elif kind == "string":
            targets = np.asarray([label2id[v] for v in dataset[column]], dtype=np.int64)
        else:
            targets = np.asarray(dataset[column], dtype=np.int64)
        if labels.task == "regression" and not np.isfinite(targets).all():
            raise ValueError(f"--label_column {column} has missing or non-finite values in the {split} split")

        if split == "train" and data_args.labelled_fraction < 1.0:
            keep = labelled_rows(
                targets,
                data_args.labelled_fraction,
                data_args.split_seed,
                stratify=labels.task == "classification",
            )
            logger.info(
                "Keeping labels on %d of %d training rows (--labelled_fraction)", keep.sum(), len(keep)
            )
            if unlabelled == "drop":
                dataset, targets = dataset.select(np.flatnonzero(keep)), targets[keep]
            else:
                targets = np.where(keep, targets, np.asarray(UNLABELLED, dtype=targets.dtype))
        out[split] = _tokenize(dataset, targets, data_args, tokenizer, split)
    return DatasetDict(out)


def _tokenize(
    dataset: Dataset,
    targets: np.ndarray,
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    split: str,
) -> Dataset:
    text_col, pair_col = data_args.text_column, data_args.text_pair_column
    dataset = dataset.add_column("__target__", targets.tolist())

    windows = data_args.train_windows if split == "train" else 1

    def encode(batch: dict) -> dict:
        texts = ["" if t is None else str(t) for t in batch[text_col]]
        pairs = ["" if t is None else str(t) for t in batch[pair_col]] if pair_col else None
        if windows == 1:
            enc = tokenizer(texts, pairs, truncation=True, max_length=data_args.max_length)
            enc["labels"] = batch["__target__"]
            return enc
        # --train_windows: the tokenizer's overflow cuts each text into consecutive windows, each
        # with its own special tokens; keep the first `windows` of each text, labelled like it.
        enc = tokenizer(
            texts, truncation=True, max_length=data_args.max_length, return_overflowing_tokens=True
        )
        if "overflow_to_sample_mapping" not in enc:
            raise ValueError(
                f"--train_windows needs a fast tokenizer (it maps windows back to texts); "
                f"{type(tokenizer).__name__} is not one: drop --train_windows"
            )
        source = enc.pop("overflow_to_sample_mapping")
        keep, previous, nth = [], None, 0
        for k, text in enumerate(source):  # a text's windows come one after another
            nth = nth + 1 if text == previous else 0
            previous = text
            if nth < windows:
                keep.append(k)
        out = {name: [values[k] for k in keep] for name, values in enc.items()}
        out["labels"] = [batch["__target__"][source[k]] for k in keep]
        return out

    encoded = dataset.map(
        encode,
        batched=True,
        remove_columns=dataset.column_names,
        num_proc=data_args.preprocessing_num_workers,
        desc=f"Tokenising the {split} split",
    )
    if windows > 1:
        logger.info("--train_windows %d: %d training rows from %d texts", windows, len(encoded), len(dataset))
    return encoded


def sample_texts(raw: DatasetDict, data_args: DataArguments, count: int = 256) -> list[str]:
    """The first `count` training texts (first texts only), e.g. for data-aware student initialisation."""
    split = raw["train"] if "train" in raw else raw[next(iter(raw))]
    count = min(count, len(split))
    return ["" if t is None else str(t) for t in split.select(range(count))[data_args.text_column]]


def split_texts(raw: DatasetDict, data_args: DataArguments, split: str) -> list[str]:
    """Every text of one split as the model reads it (first texts, then second texts of pairs), capped at
    `--max_train_samples` / `--max_eval_samples` as `encode_splits` caps it: the texts a trimmed
    student's vocabulary is chosen from (train) or its coverage is measured on (validation)."""
    cap = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
    dataset = raw[split]
    if cap is not None and cap < len(dataset):
        dataset = dataset.select(range(cap))
    columns = [data_args.text_column] + ([data_args.text_pair_column] if data_args.text_pair_column else [])
    return ["" if t is None else str(t) for column in columns for t in dataset[column]]
