"""Data every task shares: local files or hub datasets as train / validation / test splits, the checks
that the task's columns are there, and the teacher / student / tokenizer agreement.

    raw = load_raw_splits(data_args)     # splits, held-out parts cut from train where asked, columns checked

Task-specific labels and tokenisation live in `ckadistill.tasks` (`classification_data`, `seq2seq_data`).
Every problem with the data is raised before any training starts, naming the flag that fixes it.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from ckadistill.config import DataArguments

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")

# file suffix -> (`datasets` builder, extra builder arguments)
FILE_BUILDERS: dict[str, tuple[str, dict]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


# ---------------------------------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------------------------------


def _builder_for(path: Path, flag: str) -> tuple[str, dict]:
    suffix = path.suffix.lower()
    if suffix not in FILE_BUILDERS:
        raise ValueError(
            f"--{flag} {path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_BUILDERS)}"
        )
    return FILE_BUILDERS[suffix]


# what a file of each `datasets` builder must look like, for the errors of unreadable files
FILE_FORMS = {
    "csv": "UTF-8 text with a header row and the same number of fields on every row",
    "json": "UTF-8 text with one JSON object per line (.jsonl) or a JSON list of objects (.json)",
    "parquet": "a parquet table",
    "text": "UTF-8 text, one document per line",
}


def read_errors() -> tuple[type[Exception], ...]:
    """What `datasets` and pyarrow raise for a file they cannot parse (bad bytes, bad syntax, ragged rows)."""
    import pyarrow as pa
    from datasets.exceptions import DatasetGenerationError

    # UnicodeDecodeError, json.JSONDecodeError and pandas' ParserError are ValueErrors
    return (DatasetGenerationError, pa.ArrowException, ValueError)


def unreadable_file(err: Exception, path: Path, builder: str, flag: str) -> ValueError:
    """The error for a file `datasets` could not parse, naming the flag and the format it expects."""
    cause = err.__cause__ or err.__context__ or err  # DatasetGenerationError wraps the parser's error
    if "corresponds to no data" in str(cause):  # `datasets` read no record at all (`[]`, `{}`)
        return ValueError(f"--{flag} {path} is empty: it holds no rows")
    detail = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
    return ValueError(f"--{flag} {path} cannot be read ({detail}); it must be {FILE_FORMS[builder]}")


def _check_not_empty(path: Path, builder: str, flag: str) -> None:
    """Raise before `datasets` does, with a message that names the file and the flag."""
    if not path.is_file():
        raise ValueError(f"--{flag} {path} does not exist")
    if builder == "parquet":
        import pyarrow.parquet as pq

        try:
            num_rows = pq.ParquetFile(path).metadata.num_rows
        except read_errors() as err:
            raise unreadable_file(err, path, builder, flag) from err
        if num_rows == 0:
            raise ValueError(f"--{flag} {path} is empty: it holds no rows")
        return
    non_blank, head, first = 0, "", ""
    with path.open(encoding="utf-8", errors="replace") as handle:
        for line in handle:
            non_blank += bool(line.strip())
            first = first or line.strip().lstrip("\ufeff")  # the first line that is not blank
            if len(head) < 10:
                head += re.sub(r"[\s\ufeff]", "", line)  # the file's first characters that are not blanks
            if non_blank >= 2 and len(head) >= 10:
                break
    if non_blank == 0:
        raise ValueError(f"--{flag} {path} is empty: it holds no rows")
    if builder == "csv" and non_blank < 2:
        raise ValueError(f"--{flag} {path} has a header but no data rows")
    if builder == "json":
        _check_json_records(path, first, head, flag)


def _check_json_records(path: Path, first: str, head: str, flag: str) -> None:
    """Refuse the JSON records that crash the whole process (a segfault in pyarrow 26's JSON reader, which
    `datasets` uses) before `datasets` sees them.

    pyarrow crashes when a block it parses starts with `null`: the file's first record, the first line
    of a later 10 MB block, or a first record that `datasets` rewrites into `null` (NaN, Infinity) when
    the records mix types. So the first record must be an object (the first element of a JSON list must
    not be null or NaN), and no line of JSON Lines may start with `null` (one pass over the bytes, at
    memory speed; a JSON list is parsed as one block, so only its first element matters).
    """
    where, what = None, "a bare JSON null"
    if head.startswith("["):  # one JSON list of records (.json)
        if head[1:].startswith(("null", "NaN", "Infinity", "-Infinity")):
            where, what = "its first record", "null or NaN"
    else:
        try:
            record = json.loads(first)
        except ValueError:  # not one record per line (a multi-line object) or broken: `datasets` says which
            record = {}
        if not isinstance(record, dict):
            kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(record), "a number")
            kind = "null" if record is None else kind
            where, what = "its first record", f"{kind} ({first[:20]}), not a JSON object"
    if where is None and not head.startswith("["):
        seen, tail = 0, b""  # newlines before this chunk; the last bytes of the previous one
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 24):
                block = tail + chunk
                at = block.find(b"\nnull")
                if at >= 0:
                    line = seen - tail.count(b"\n") + block.count(b"\n", 0, at) + 2
                    where = f"line {line}"
                    break
                seen += chunk.count(b"\n")
                tail = block[-4:]
    if where is not None:
        raise ValueError(
            f'--{flag} {path}: {where} is {what}; every record must be an object such as {{"text": "..."}}'
        )


def load_file(path: str | Path, *, flag: str, cache_dir: str | None = None) -> Dataset:
    """Load one local csv / tsv / json / jsonl / parquet file as a `datasets.Dataset`."""
    from datasets import load_dataset

    path = Path(path)
    builder, kwargs = _builder_for(path, flag)
    _check_not_empty(path, builder, flag)
    try:
        dataset = load_dataset(
            builder, data_files={"data": str(path)}, split="data", cache_dir=cache_dir, **kwargs
        )
    except read_errors() as err:
        raise unreadable_file(err, path, builder, flag) from err
    if len(dataset) == 0:
        raise ValueError(f"--{flag} {path} is empty: it holds no rows")
    return dataset


def hold_out(dataset: Dataset, fraction: float, seed: int, *, flag: str, split: str) -> DatasetDict:
    """`train_test_split` of `fraction` of the rows into "test", with an error naming `--{flag}` when the
    rows are too few to leave some on both sides."""
    try:
        return dataset.train_test_split(test_size=fraction, seed=seed)
    except ValueError as err:
        raise ValueError(
            f"--{flag} leaves no rows for training or none for the {split} split of the {len(dataset)} "
            f"training rows ({err}): give more rows, a --{split}_file, or --{flag} 0"
        ) from err


def load_raw_splits(data_args: DataArguments, *, require_train: bool = True) -> DatasetDict:
    """The raw train / validation / test splits, with held-out splits cut from train where asked.

    Files (`--train_file`, `--validation_file`, `--test_file`) take precedence over `--dataset_name`.
    Without a validation (or test) split, `--validation_split_fraction` (`--test_split_fraction`) of
    the training rows are held out, shuffled with `--split_seed`.
    """
    from datasets import DatasetDict, load_dataset

    files = {
        "train": data_args.train_file,
        "validation": data_args.validation_file,
        "test": data_args.test_file,
    }
    if any(files.values()):
        splits = {
            name: load_file(path, flag=f"{name}_file", cache_dir=data_args.data_cache_dir)
            for name, path in files.items()
            if path
        }
    elif data_args.dataset_name:
        hub = load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, cache_dir=data_args.data_cache_dir
        )
        splits = {name: hub[name] for name in SPLITS if name in hub}
        for name in ("validation", "test"):
            # GLUE-style hub splits hide their labels as -1; such a split cannot be scored.
            column = data_args.label_column
            if (
                name in splits
                and column in splits[name].column_names
                and set(splits[name].unique(column)) <= {-1}
            ):
                logger.warning(
                    "Dropping the %s split of %s: its labels are hidden", name, data_args.dataset_name
                )
                del splits[name]
    else:
        raise ValueError(
            "no data given: pass --train_file (and optionally --validation_file, --test_file) or --dataset_name"
        )
    if require_train and "train" not in splits:
        raise ValueError("no training data: pass --train_file (or a --dataset_name with a 'train' split)")

    if "train" in splits:
        if "test" not in splits and data_args.test_split_fraction > 0:
            parts = hold_out(
                splits["train"],
                data_args.test_split_fraction,
                data_args.split_seed,
                flag="test_split_fraction",
                split="test",
            )
            splits["train"], splits["test"] = parts["train"], parts["test"]
        if "validation" not in splits and data_args.validation_split_fraction > 0:
            # The fraction is of the original training rows, some of which may already be in test.
            fraction = data_args.validation_split_fraction / (1.0 - data_args.test_split_fraction)
            parts = hold_out(
                splits["train"],
                fraction,
                data_args.split_seed,
                flag="validation_split_fraction",
                split="validation",
            )
            splits["train"], splits["validation"] = parts["train"], parts["test"]
    raw = DatasetDict(splits)
    if any(
        "." in column and column not in raw[split].column_names
        for _, column in _wanted_columns(data_args)
        for split in raw
    ):
        # Nested fields, as in WMT's `translation` dict column: `datasets` names them
        # `translation.en`, `translation.ro` once flattened.
        raw = raw.flatten()
    check_columns(raw, data_args)
    return raw


def _wanted_columns(data_args: DataArguments) -> list[tuple[str, str]]:
    """`(flag, column)` of every column the task reads."""
    if data_args.is_seq2seq:
        return [("source_column", data_args.source_column), ("target_column", data_args.target_column)]
    wanted = [("text_column", data_args.text_column), ("label_column", data_args.label_column)]
    if data_args.text_pair_column:
        wanted.append(("text_pair_column", data_args.text_pair_column))
    return wanted


def check_columns(raw: DatasetDict, data_args: DataArguments) -> None:
    """Every split must hold the columns the task reads; the error lists the columns there are.

    Classification reads the text (pair) and label columns; summarization and translation read the
    source and target columns. A nested field is named with a dot (`translation.en`).
    """
    wanted = _wanted_columns(data_args)
    for split, dataset in raw.items():
        for flag, column in wanted:
            if column not in dataset.column_names:
                raise ValueError(
                    f"column {column!r} (--{flag}) not found in the {split} split; available columns: "
                    f"{', '.join(dataset.column_names)}. Pass --{flag} with one of them"
                )


# ---------------------------------------------------------------------------------------------------
# Teacher / student / tokenizer agreement.
# ---------------------------------------------------------------------------------------------------


def check_vocab_compatible(
    teacher_config: PretrainedConfig,
    student_config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    tokenizer_name: str,
    student_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Teacher and student read the same token ids: same vocabulary size, and the tokenizer fits both.

    Raises:
        ValueError: with both vocabulary sizes and the tokenizer named, and how to fix it.
    """
    t_vocab, s_vocab = teacher_config.vocab_size, student_config.vocab_size
    if t_vocab != s_vocab:
        raise ValueError(
            f"teacher and student vocabularies differ: teacher vocab_size {t_vocab}, student vocab_size {s_vocab} "
            f"(tokenizer {tokenizer_name}, {len(tokenizer)} tokens). Both must use the same tokenizer: build the "
            "student from this teacher (--student_layers / --student_hidden_size) or pass a matching --student"
        )
    if len(tokenizer) > t_vocab:
        raise ValueError(
            f"tokenizer {tokenizer_name} has {len(tokenizer)} tokens but the models' vocab_size is {t_vocab}; "
            "pass the teacher's own tokenizer (--tokenizer_name)"
        )
    if student_tokenizer is not None and student_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"the student's tokenizer ({len(student_tokenizer)} tokens) differs from the teacher's tokenizer "
            f"{tokenizer_name} ({len(tokenizer)} tokens): both must map text to the same ids"
        )


# ---------------------------------------------------------------------------------------------------
# Sample text (cka-map, make-student --init pca).
# ---------------------------------------------------------------------------------------------------

TEXT_SUFFIXES = (".txt", ".csv", ".jsonl")


def read_texts(
    path: str | Path,
    text_column: str = "text",
    target_column: str | None = None,
    max_samples: int | None = None,
    *,
    flag: str = "data",
    text_flag: str = "text-column",
) -> tuple[list[str], list[str] | None]:
    """Texts (and targets when `target_column` is given) from a .txt, .csv or .jsonl file, blanks skipped.

    Sample text for `cka-map` and for `make-student --init pca`; errors name `flag`, the option that
    gave the file, and `text_flag`, the one that gave the text column.
    """
    path = Path(path)
    if path.suffix not in TEXT_SUFFIXES:
        raise ValueError(f"--{flag} must end in one of {', '.join(TEXT_SUFFIXES)}, got {path.name!r}")
    if not path.is_file():
        raise ValueError(f"--{flag} file not found: {path}")
    if path.suffix == ".txt" and target_column is not None:
        raise ValueError("--target-column needs a .csv or .jsonl file; a .txt file holds one text per line")
    try:
        rows, fields = _read_rows(path, flag)
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--{flag} {path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8"
        ) from err
    if path.suffix == ".txt":
        text_column = "text"
    for column, column_flag in ((text_column, text_flag), (target_column, "target-column")):
        if column is not None and rows and column not in fields:
            raise ValueError(
                f"--{column_flag} {column!r} is not in {path.name}; its fields are {sorted(fields)}"
            )
    # a missing cell (a short csv row, a json null or absent key) counts as a blank text
    rows = [r for r in rows if r.get(text_column) is not None and str(r[text_column]).strip()]
    if max_samples is not None:
        rows = rows[:max_samples]
    if not rows:
        raise ValueError(f"--{flag} {path} holds no non-empty texts")
    texts = [str(r[text_column]) for r in rows]
    if target_column is None:
        return texts, None
    missing = next((i for i, r in enumerate(rows) if r.get(target_column) is None), None)
    if missing is not None:
        raise ValueError(
            f"--target-column {target_column!r} is empty in text {missing + 1} of {path.name}: every text "
            "needs a target"
        )
    return texts, [str(r[target_column]) for r in rows]


def _read_rows(path: Path, flag: str) -> tuple[list[dict], list[str]]:
    """The rows of a .txt, .csv or .jsonl file and their field names (a BOM is dropped)."""
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8-sig").splitlines()
        return [{"text": line.strip()} for line in lines], ["text"]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            try:
                rows = list(reader)
            except csv.Error as err:
                raise ValueError(f"--{flag} {path} is not valid CSV: {err}") from err
            return rows, list(reader.fieldnames or [])
    rows = []
    # split on "\n" only: str.splitlines would also cut at U+2028 and friends, which JSON strings may hold
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"--{flag} {path} line {number} is not valid JSON ({err.msg}); a .jsonl file holds one JSON "
                "object per line"
            ) from err
        if not isinstance(row, dict):
            raise ValueError(
                f"--{flag} {path} line {number} holds a JSON {type(row).__name__}, not an object; a .jsonl "
                'file holds one JSON object per line, such as {"text": "..."}'
            )
        rows.append(row)
    return rows, list(rows[0]) if rows else []
