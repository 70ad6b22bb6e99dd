"""Raw text for task-agnostic distillation (`--task general`): a corpus read whole or streamed, cut into
model inputs one document per example or packed into full blocks.

    train, validation = load_corpus(data_args)            # Dataset, or IterableDataset with --streaming
    encoded = encode_corpus(train, tokenizer, data_args)  # input_ids + attention_mask

Files: .txt (one document per line), .csv / .tsv / .json / .jsonl / .parquet (the `--text_column`),
local, or `--dataset_name` on the hub. With `--streaming` the training corpus is never loaded whole:
`datasets` reads it lazily, a `--shuffle_buffer`-row buffer shuffles it, and the validation rows are the
first `--max_eval_samples` documents of the stream (skipped for training) unless `--validation_file`
is given.
"""

from __future__ import annotations

import itertools
import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from ckadistill.data import FILE_BUILDERS, _check_not_empty, hold_out, read_errors, unreadable_file

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset
    from transformers import PreTrainedTokenizerBase

    from ckadistill.config import DataArguments

logger = logging.getLogger(__name__)

CORPUS_BUILDERS: dict[str, tuple[str, dict]] = {".txt": ("text", {}), **FILE_BUILDERS}
DEFAULT_STREAM_VALIDATION = 500  # documents held out from the head of a stream without --max_eval_samples
MODEL_COLUMNS = ["input_ids", "attention_mask"]


def _corpus_builder(path: Path, flag: str) -> tuple[str, dict]:
    suffix = path.suffix.lower()
    if suffix not in CORPUS_BUILDERS:
        raise ValueError(
            f"--{flag} {path}: unsupported file type {suffix!r} for --task general; use one of "
            f"{', '.join(CORPUS_BUILDERS)} (.txt holds one document per line)"
        )
    return CORPUS_BUILDERS[suffix]


def _load(path: str, flag: str, data_args: DataArguments, *, streaming: bool):
    from datasets import load_dataset

    path = Path(path)
    builder, kwargs = _corpus_builder(path, flag)
    _check_not_empty(path, builder, flag)
    if builder == "text":
        # a .txt file is its own text column, whatever --text_column says
        kwargs = {**kwargs, "sample_by": "line"}
    try:
        dataset = load_dataset(
            builder,
            data_files={"train": str(path)},
            split="train",
            streaming=streaming,
            cache_dir=data_args.data_cache_dir,
            **kwargs,
        )
    except read_errors() as err:
        raise unreadable_file(err, path, builder, flag) from err
    if not streaming and len(dataset) == 0:
        raise ValueError(f"--{flag} {path} is empty: it holds no rows")
    return dataset


def _column_names(dataset) -> list[str]:
    """Column names of a Dataset, or of a stream (read from its first row when its features are unknown)."""
    if dataset.column_names is not None:
        return list(dataset.column_names)
    try:
        return list(next(iter(dataset)).keys())
    except StopIteration:
        return []


def text_column_of(dataset, data_args: DataArguments, flag: str) -> str:
    """The column holding the documents: 'text' for .txt files, else `--text_column` (checked)."""
    try:
        columns = _column_names(dataset)  # a stream reads its first row here, and may fail on it
    except (*read_errors(), TypeError, KeyError) as err:  # a stream's reader raises them unwrapped
        cause = err.__cause__ or err.__context__ or err
        raise ValueError(
            f"--{flag} cannot be read ({type(cause).__name__}: {' '.join(str(cause).split())[:300]})"
        ) from err
    if not columns:
        raise ValueError(f"--{flag} holds no rows")
    if data_args.text_column in columns:
        return data_args.text_column
    if columns == ["text"]:
        return "text"
    raise ValueError(
        f"--text_column {data_args.text_column!r} is not a column of --{flag}; its columns are {columns}"
    )


def load_corpus(
    data_args: DataArguments,
) -> tuple[Dataset | IterableDataset, Dataset | IterableDataset | None]:
    """`(train, validation)`: the training corpus (streamed with `--streaming`) and the held-out documents.

    Without `--validation_file`, a `--validation_split_fraction` of the documents is held out (a read
    corpus), or the first `--max_eval_samples` documents (a stream); `validation` is None when neither
    applies (a fraction of 0).
    """
    from datasets import load_dataset

    streaming = data_args.streaming
    if data_args.train_file:
        train = _load(data_args.train_file, "train_file", data_args, streaming=streaming)
    elif data_args.dataset_name:
        train = load_dataset(
            data_args.dataset_name,
            data_args.dataset_config_name,
            split="train",
            streaming=streaming,
            cache_dir=data_args.data_cache_dir,
        )
    else:
        raise ValueError(
            "no corpus given: pass --train_file (one document per line in a .txt) or --dataset_name"
        )
    validation = None
    if data_args.validation_file:
        validation = _load(data_args.validation_file, "validation_file", data_args, streaming=False)
    elif streaming:
        held_out = data_args.max_eval_samples or DEFAULT_STREAM_VALIDATION
        if data_args.validation_split_fraction > 0:
            validation, train = train.take(held_out), train.skip(held_out)
    elif data_args.validation_split_fraction > 0:
        parts = hold_out(
            train,
            data_args.validation_split_fraction,
            data_args.split_seed,
            flag="validation_split_fraction",
            split="validation",
        )
        train, validation = parts["train"], parts["test"]
    if streaming:
        train = train.shuffle(seed=data_args.split_seed, buffer_size=data_args.shuffle_buffer)
    if data_args.max_train_samples is not None:
        train = (
            train.take(data_args.max_train_samples)
            if streaming
            else train.select(range(min(data_args.max_train_samples, len(train))))
        )
    if validation is not None and data_args.max_eval_samples is not None and not streaming:
        validation = validation.select(range(min(data_args.max_eval_samples, len(validation))))
    return train, validation


def special_token_frame(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a single text (`[CLS]` / `[SEP]` for BERT, `<s>` /
    `</s>` for RoBERTa and BART, `</s>` after for T5), read off the encoding of one word."""
    with_special = tokenizer("hello", add_special_tokens=True)["input_ids"]
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    for start in range(len(with_special) - len(plain) + 1):
        if with_special[start : start + len(plain)] == plain:
            return with_special[:start], with_special[start + len(plain) :]
    raise ValueError(f"cannot find where {type(tokenizer).__name__} puts its special tokens")


def pack_documents(
    token_ids: list[list[int]],
    max_length: int,
    prefix: list[int],
    suffix: list[int],
    separator: int | None,
    min_tokens: int = 8,
) -> list[list[int]]:
    """Concatenate tokenised documents (a separator between them) and cut the stream into blocks of
    `max_length` tokens, each framed by the tokenizer's special tokens; a final block shorter than
    `min_tokens` of content is dropped unless it is the only one."""
    body = max_length - len(prefix) - len(suffix)
    if body < 1:
        raise ValueError(f"--max_length {max_length} leaves no room for text between the special tokens")
    stream: list[int] = []
    for ids in token_ids:
        if not ids:
            continue
        if stream and separator is not None:
            stream.append(separator)
        stream.extend(ids)
    blocks = [stream[i : i + body] for i in range(0, len(stream), body)]
    if len(blocks) > 1 and len(blocks[-1]) < min_tokens:
        blocks.pop()
    return [prefix + block + suffix for block in blocks]


def encode_corpus(
    dataset: Dataset | IterableDataset,
    tokenizer: PreTrainedTokenizerBase,
    data_args: DataArguments,
    *,
    flag: str = "train_file",
    pack: bool | None = None,
) -> Dataset | IterableDataset:
    """Model inputs (`input_ids`, `attention_mask`) from a corpus: one truncated example per document,
    or, with packing (`--pack_sequences`; `pack` overrides it), full `--max_length` blocks of
    consecutive documents. Blank documents are dropped."""
    column = text_column_of(dataset, data_args, flag)
    columns = _column_names(dataset)
    pack = data_args.pack_sequences if pack is None else pack
    max_length = data_args.max_length
    if pack:
        prefix, suffix = special_token_frame(tokenizer)
        separator = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id

    def encode(batch: dict) -> dict:
        texts = [str(t) for t in batch[column] if t is not None and str(t).strip()]
        if not texts:
            return {name: [] for name in MODEL_COLUMNS}
        if not pack:
            encoded = tokenizer(texts, truncation=True, max_length=max_length)
            return {name: encoded[name] for name in MODEL_COLUMNS}
        plain = tokenizer(texts, add_special_tokens=False)["input_ids"]
        blocks = pack_documents(plain, max_length, prefix, suffix, separator)
        return {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]}

    kwargs: dict = {"batched": True, "batch_size": 1000, "remove_columns": columns}
    if dataset.__class__.__name__ == "Dataset":
        kwargs.update(num_proc=data_args.preprocessing_num_workers, desc="Tokenising the corpus")
    return dataset.map(encode, **kwargs)


# ---------------------------------------------------------------------------------------------------
# Encoder-decoder objectives on raw text: reconstruction, text infilling (BART), span corruption (T5).
# ---------------------------------------------------------------------------------------------------

SEQ2SEQ_OBJECTIVES = ("reconstruction", "infilling", "span_corruption")


def _random_partition(total: int, parts: int, rng: random.Random) -> list[int]:
    """`parts` positive integers summing to `total` (a uniformly random composition)."""
    cuts = sorted(rng.sample(range(1, total), parts - 1))
    bounds = [0, *cuts, total]
    return [b - a for a, b in itertools.pairwise(bounds)]


def noise_span_mask(length: int, density: float, mean_span: float, rng: random.Random) -> list[bool]:
    """Which of `length` tokens to corrupt: about `density · length` of them, in spans of about
    `mean_span`, alternating with kept spans and starting with a kept one (T5's span layout). Texts of
    fewer than 2 tokens are left whole."""
    if length < 2:
        return [False] * length
    noise = min(max(1, round(length * density)), length - 1)
    spans = max(1, min(round(noise / mean_span), noise, length - noise))
    mask: list[bool] = []
    for keep, drop in zip(
        _random_partition(length - noise, spans, rng), _random_partition(noise, spans, rng), strict=True
    ):
        mask += [False] * keep + [True] * drop
    return mask


def span_corruption(ids: list[int], sentinels: list[int], mask: list[bool]) -> tuple[list[int], list[int]]:
    """T5's objective: each corrupted span of `ids` becomes one sentinel in the input, and the target
    lists each sentinel followed by the tokens it replaced."""
    inputs: list[int] = []
    targets: list[int] = []
    span = -1
    for i, (token, noisy) in enumerate(zip(ids, mask, strict=True)):
        if not noisy:
            inputs.append(token)
            continue
        if i == 0 or not mask[i - 1]:
            span += 1
            if span >= len(sentinels):
                raise ValueError(f"the text needs more than the tokenizer's {len(sentinels)} sentinel tokens")
            inputs.append(sentinels[span])
            targets.append(sentinels[span])
        targets.append(token)
    return inputs, targets


def text_infilling(ids: list[int], mask_id: int, mask: list[bool]) -> list[int]:
    """BART's text infilling: each corrupted span of `ids` becomes a single mask token."""
    out = []
    for i, (token, noisy) in enumerate(zip(ids, mask, strict=True)):
        if not noisy:
            out.append(token)
        elif i == 0 or not mask[i - 1]:  # the first token of a span
            out.append(mask_id)
    return out


class DenoisingCollator:
    """Batches for task-agnostic distillation of encoder-decoders, corrupted afresh at every batch.

    Each feature holds a text's token ids with the tokenizer's special tokens. `reconstruction` (the
    paper: the clean text is both source and target), `infilling` (BART: spans of the source replaced
    by one mask token each, the clean text as target) or `span_corruption` (T5: spans of the source
    replaced by sentinels, the target lists the spans). The special tokens the tokenizer puts around a
    text (`prefix`, `suffix`) are kept out of the corruption and frame the source and the target.
    """

    def __init__(
        self,
        tokenizer,
        objective: str,
        *,
        density: float = 0.15,
        mean_span: float = 3.0,
        seed: int = 0,
    ):
        from transformers import DataCollatorForSeq2Seq

        if objective not in SEQ2SEQ_OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(SEQ2SEQ_OBJECTIVES)}, got {objective!r}")
        self.objective, self.density, self.mean_span = objective, density, mean_span
        self.rng = random.Random(seed)
        self.prefix, self.suffix = special_token_frame(tokenizer)
        self.pad = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
        self.mask_id = tokenizer.mask_token_id
        self.sentinels: list[int] = []
        if objective == "infilling" and self.mask_id is None:
            raise ValueError(
                f"--seq2seq_objective infilling replaces spans by a mask token, which {type(tokenizer).__name__} "
                "lacks: use --seq2seq_objective reconstruction or span_corruption"
            )
        if objective == "span_corruption":
            self.sentinels = sentinel_ids(tokenizer)

    def __call__(self, features: list[dict]) -> dict:
        rows = []
        for feature in features:
            ids = list(feature["input_ids"])
            head, tail = len(self.prefix), len(ids) - len(self.suffix)
            if ids[:head] != self.prefix or ids[tail:] != self.suffix:
                head, tail = 0, len(ids)  # a truncated text lost its frame: corrupt all of it
            frame_in, body, frame_out = ids[:head], ids[head:tail], ids[tail:]
            if self.objective == "reconstruction":
                source, target = ids, ids
            else:
                mask = noise_span_mask(len(body), self.density, self.mean_span, self.rng)
                if self.objective == "infilling":
                    source, target = frame_in + text_infilling(body, self.mask_id, mask) + frame_out, ids
                else:
                    corrupted, spans = span_corruption(body, self.sentinels, mask)
                    source, target = frame_in + corrupted + frame_out, frame_in + spans + frame_out
            rows.append({"input_ids": source, "labels": target})
        return self.pad(rows)


def sentinel_ids(tokenizer) -> list[int]:
    """The ids of T5's sentinel tokens `<extra_id_0>`, `<extra_id_1>`, ... that the tokenizer knows."""
    vocab = tokenizer.get_vocab()
    ids = []
    while f"<extra_id_{len(ids)}>" in vocab:
        ids.append(vocab[f"<extra_id_{len(ids)}>"])
    if not ids:
        raise ValueError(
            f"--seq2seq_objective span_corruption needs T5's sentinel tokens (<extra_id_0>, ...), which "
            f"{type(tokenizer).__name__} lacks: use --seq2seq_objective reconstruction"
        )
    return ids
