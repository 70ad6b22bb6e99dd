"""Sequence-level distillation data: the teacher's generations written beside (or instead of) the targets.

Sequence-level knowledge distillation (Kim & Rush, 2016) trains the student on what the teacher
*generates* rather than on the references; DistilBART (Shleifer & Rush, 2020) calls these outputs
pseudo-labels. The design keeps `ckadistill distill` untouched: pseudo-labelling turns one data file
into another, and `distill` reads it like any training file.

    ckadistill pseudo-label --teacher T --data train.csv --output train_pseudo.jsonl
    ckadistill distill preset.yaml --train_file train_pseudo.jsonl --target_column pseudo_target

writes every row of `train.csv` with all its columns plus `pseudo_target` (the teacher's output), so
`--target_column pseudo_target` trains on the teacher's outputs alone. With `--mix true` every row is
written twice, first with the gold target, then with the teacher's output in the target column (both
lines carry `pseudo_target`), so the plain `--train_file train_pseudo.jsonl` trains on both.

Score on gold data. `distill --target_column` names the target of every split, so a `--validation_file`
would need a `pseudo_target` column too. To train on the teacher's outputs alone and still score
against gold references, write them into the target column itself (`--pseudo_column target`, the
same name as `--target_column`; the gold targets stay in `--data`) and keep the default target column:

    ckadistill pseudo-label --teacher T --data train.csv --output train_pseudo.jsonl --pseudo_column target
    ckadistill distill preset.yaml --train_file train_pseudo.jsonl --validation_file validation.csv

With `--mix`, too, pass a gold `--validation_file`: a split held out of the mixed file would hold the
twins of training rows.

Resuming. Results are appended in row order to `<output>.partial` and flushed (and synced) after every
generation batch. A restart reads that file back: a last line without its newline was torn by the
kill and is dropped, a row of which only some lines made it (`--mix true`) is dropped, the rows that
remain are checked against the data's sources, and generation continues after them. Only when every
row is done is the partial file renamed to `--output` (`os.replace`, atomic), so a file at `--output`
is always complete. The restart must use the same data, columns and `--mix`; generation settings are
not recorded, so change them only with `--overwrite true`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ckadistill.config import DataArguments
from ckadistill.tasks.seq2seq_metrics import generate

if TYPE_CHECKING:
    from datasets import Dataset

    from ckadistill.config import GenerationArguments

logger = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"


@dataclass
class PseudoLabelArguments:
    """The teacher, the data file and the JSON-lines file its generations go to."""

    teacher: str | None = field(
        default=None,
        metadata={
            "help": "Directory (or hub name) of the encoder-decoder teacher that generates (required)."
        },
    )
    data: str | None = field(
        default=None,
        metadata={
            "help": "Rows to label: .csv, .tsv, .json, .jsonl or .parquet with a source column (required)."
        },
    )
    output: str | None = field(
        default=None,
        metadata={
            "help": "JSON-lines file written (required, ending in .jsonl): every column of --data plus "
            "--pseudo_column; in progress as <output>.partial, resumed after a kill."
        },
    )
    pseudo_column: str = field(
        default="pseudo_target",
        metadata={
            "help": "Column the teacher's output is written to; the --target_column name replaces the gold "
            "targets (train on the teacher's outputs, score on a gold --validation_file)."
        },
    )
    mix: bool = field(
        default=False,
        metadata={
            "help": "Write every row twice, with the gold target and with the teacher's output in "
            "--target_column, so that distill trains on both."
        },
    )
    overwrite: bool = field(
        default=False,
        metadata={"help": "Regenerate an existing --output and discard any <output>.partial."},
    )
    max_samples: int | None = field(default=None, metadata={"help": "Label only the first N rows of --data."})

    def __post_init__(self):
        required = {
            "teacher": "the encoder-decoder teacher's directory",
            "data": "the .csv/.tsv/.json/.jsonl/.parquet file to label",
            "output": "the .jsonl file to write",
        }
        for name, what in required.items():
            if not getattr(self, name):
                raise ValueError(f"--{name} is required: {what}")
        if Path(self.output).suffix != ".jsonl":
            raise ValueError(
                f"--output {self.output} must end in .jsonl (JSON lines, which `ckadistill distill --train_file` reads)"
            )
        if not self.pseudo_column:
            raise ValueError("--pseudo_column must name a column, got an empty string")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be >= 1 (or unset for all rows), got {self.max_samples}")

    @property
    def partial(self) -> Path:
        """Where results accumulate until every row is done."""
        return Path(self.output + PARTIAL_SUFFIX)

    @property
    def lines_per_row(self) -> int:
        return 2 if self.mix else 1


@dataclass
class PseudoLabelDataArguments(DataArguments):
    """`DataArguments` with summarization as the default task (classification has nothing to generate)."""

    task: Literal["classification", "summarization", "translation"] = field(
        default="summarization",
        metadata={"help": "What the teacher does: 'summarization' or 'translation'."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.is_seq2seq:
            raise ValueError(f"--task must be summarization or translation to generate, got {self.task!r}")
        for name in ("dataset_name", "train_file", "validation_file", "test_file"):
            if getattr(self, name) is not None:
                raise ValueError(f"--{name} is not read by pseudo-label: pass one local file as --data")


# ---------------------------------------------------------------------------------------------------
# Rows in, lines out.
# ---------------------------------------------------------------------------------------------------


def output_lines(row: dict[str, Any], pseudo: str, args: PseudoLabelArguments, target_column: str) -> str:
    """The JSON line(s) of one row: the row plus the pseudo column; with `--mix`, a second line whose
    target is the teacher's output. Ends with a newline."""
    labelled = {**row, args.pseudo_column: pseudo}
    records = [labelled, {**labelled, target_column: pseudo}] if args.mix else [labelled]
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _check_texts(values: list[Any], flag: str, column: str) -> None:
    """Every value must be non-blank text (a csv column of empty cells loads as NaN floats)."""
    for i, value in enumerate(values):
        if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
            raise ValueError(
                f"--{flag} {column!r} is empty in row {i} (counting from 0) of --data: every row needs text. "
                "Drop or fill such rows, or pass the right column"
            )


def load_rows(args: PseudoLabelArguments, data_args: DataArguments) -> Dataset:
    """The rows of `--data` (the first `--max_samples`), with the columns the labelling reads checked."""
    from ckadistill.data import load_file

    dataset = load_file(args.data, flag="data", cache_dir=data_args.data_cache_dir)
    if args.max_samples is not None and args.max_samples < len(dataset):
        dataset = dataset.select(range(args.max_samples))
    wanted = [("source_column", data_args.source_column)]
    if args.mix:
        wanted.append(("target_column", data_args.target_column))
    for flag, column in wanted:
        if column not in dataset.column_names:
            raise ValueError(
                f"column {column!r} (--{flag}) not found in --data {args.data}; available columns: "
                f"{', '.join(dataset.column_names)}. Pass --{flag} with one of them"
            )
        _check_texts(dataset[column], flag, column)
    # The teacher's output may replace the target column (training on it alone), no other column.
    replaces_target = args.pseudo_column == data_args.target_column
    if replaces_target and args.mix:
        raise ValueError(
            f"--pseudo_column {args.pseudo_column!r} is --target_column, but --mix true keeps the gold target "
            "there: pass another --pseudo_column (e.g. pseudo_target)"
        )
    if args.pseudo_column in dataset.column_names and not replaces_target:
        raise ValueError(
            f"--pseudo_column {args.pseudo_column!r} is already a column of --data {args.data}: pass a new "
            f"name, e.g. pseudo_target, or --target_column ({data_args.target_column!r}) to replace the targets"
        )
    return dataset


# ---------------------------------------------------------------------------------------------------
# Resuming.
# ---------------------------------------------------------------------------------------------------


def recover_partial(path: Path, sources: list[str], source_column: str, lines_per_row: int) -> int:
    """Keep the complete rows of an interrupted run's partial file and return how many there are.

    A last line without its newline (torn by a kill mid-write) and the lines of an incomplete row
    are cut off the file (truncated in place). Every kept line must be JSON whose `source_column`
    equals the source of the row it belongs to. The file is read line by line, never whole.

    Args:
        path: the `<output>.partial` file; a missing file means nothing is done yet.
        sources: the source text of every row of the data, in order.
        lines_per_row: 2 with `--mix`, else 1.

    Raises:
        ValueError: the file holds lines of other data, or more rows than the data has.
    """
    if not path.is_file():
        return 0
    start_over = "Delete it or pass --overwrite true to start over"
    rows, kept_bytes, read_bytes = 0, 0, 0
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith(b"\n"):
                logger.warning("%s: dropping a torn last line (%d bytes)", path, len(line))
                break
            read_bytes += len(line)
            row = (number - 1) // lines_per_row
            if row >= len(sources):
                raise ValueError(
                    f"{path} holds more rows than the {len(sources)} of --data (after --max_samples): it "
                    f"belongs to other data. {start_over}"
                )
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ValueError(f"{path}: line {number} is not JSON. {start_over}") from None
            if not isinstance(record, dict) or str(record.get(source_column)) != sources[row]:
                raise ValueError(
                    f"{path}: line {number} is not row {row} of --data (its {source_column!r} differs): the file "
                    f"belongs to other data, columns or --mix. {start_over}"
                )
            if number % lines_per_row == 0:  # the row's last line: the row is complete
                rows, kept_bytes = row + 1, read_bytes
    if kept_bytes < path.stat().st_size:
        with path.open("r+b") as handle:
            handle.truncate(kept_bytes)
    return rows


# ---------------------------------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------------------------------


def load_teacher(name: str):
    """The encoder-decoder teacher and its tokenizer, on the accelerator when there is one."""
    import torch
    from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name)
    except OSError as err:
        raise ValueError(f"--teacher {name}: cannot load a model config ({err})") from None
    if not config.is_encoder_decoder:
        raise ValueError(
            f"--teacher {name} is a {config.model_type} model, not an encoder-decoder: pseudo-labels come from a "
            "sequence-to-sequence teacher (BART, mBART, T5, ...). Pass such a model's directory"
        )
    model = AutoModelForSeq2SeqLM.from_pretrained(name)
    tokenizer = AutoTokenizer.from_pretrained(name)
    device = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else "cpu"
    return model.to(device), tokenizer


def run_pseudo_label(
    args: PseudoLabelArguments, data_args: DataArguments, generation_args: GenerationArguments
) -> dict[str, int]:
    """Write the teacher's generation for every row of `--data` to `--output`, resuming a partial run.

    Returns:
        `rows` (data rows labelled), `resumed` (rows found done in the partial file), `generated`
        (rows generated by this call) and `lines` (lines in `--output`).

    Raises:
        ValueError: an existing `--output` without `--overwrite`, missing or empty columns, a teacher that
            is not an encoder-decoder, language codes the tokenizer lacks, a partial file of other data.
    """
    from tqdm.auto import tqdm

    from ckadistill.tasks.seq2seq_data import forced_bos_token_id, prepare_tokenizer

    # --- refuse to clobber, or start over ---
    output, partial = Path(args.output), args.partial
    if output.exists() and not args.overwrite:
        raise ValueError(
            f"--output {output} already exists: pass --overwrite true to regenerate it, or another --output"
        )
    if args.overwrite:
        partial.unlink(missing_ok=True)

    # --- data, then the teacher ---
    dataset = load_rows(args, data_args)
    source_column = data_args.source_column
    sources = [str(s) for s in dataset[source_column]]
    model, tokenizer = load_teacher(args.teacher)
    prefix = prepare_tokenizer(tokenizer, model.config, data_args)
    bos = forced_bos_token_id(tokenizer, model.config, data_args)

    # --- resume after the complete rows of an interrupted run ---
    output.parent.mkdir(parents=True, exist_ok=True)
    done = recover_partial(partial, sources, source_column, args.lines_per_row)
    if done:
        logger.info("Resuming %s: %d of %d rows already done", partial, done, len(sources))

    # --- generate batch by batch, appending and flushing each ---
    size, empty = generation_args.generation_batch_size, 0
    with (
        partial.open("a", encoding="utf-8") as handle,
        tqdm(total=len(sources), initial=done, desc="Pseudo-labelling", unit="row") as bar,
    ):
        for start in range(done, len(sources), size):
            stop = min(start + size, len(sources))
            pseudo = generate(
                model,
                tokenizer,
                sources[start:stop],
                generation_args,
                prefix=prefix,
                max_source_length=data_args.max_source_length,
                forced_bos_token_id=bos,
                progress=False,  # the bar above counts rows
            )
            columns = dataset[start:stop]  # {column: [values]}
            rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
            handle.write(
                "".join(
                    output_lines(row, text, args, data_args.target_column)
                    for row, text in zip(rows, pseudo, strict=True)
                )
            )
            handle.flush()
            os.fsync(handle.fileno())
            empty += sum(not text for text in pseudo)
            bar.update(stop - start)

    # --- complete: publish atomically ---
    os.replace(partial, output)
    if empty:
        logger.warning(
            "%d teacher outputs are empty; distill refuses empty targets, so drop those rows or generate with "
            "other settings (e.g. a larger --max_new_tokens)",
            empty,
        )
    return {
        "rows": len(sources),
        "resumed": done,
        "generated": len(sources) - done,
        "lines": len(sources) * args.lines_per_row,
    }
