"""Summarisation and translation data: language codes, task prefixes, tokenised sources and targets.

The flow, as the seq2seq entry points use it:

    raw = load_raw_splits(data_args)                                  # source / target columns checked
    prefix = prepare_tokenizer(tokenizer, teacher.config, data_args)  # language codes set, prefix chosen
    encoded = encode_seq2seq_splits(raw, data_args, tokenizer, prefix)  # input_ids, attention_mask, labels
    sources, references = seq2seq_texts(raw, data_args, "validation")   # raw strings, for generate()
    bos = forced_bos_token_id(tokenizer, teacher.config, data_args)     # target code, or None

Two model-family details live here, following the transformers summarization/translation examples:

- Multilingual tokenizers (mBART, mBART-50, M2M100, NLLB) mark every sequence with a language code.
  Setting `tokenizer.src_lang` / `tokenizer.tgt_lang` makes `tokenizer(text)` add the source code and
  `tokenizer(text_target=...)` the target code, each where its family puts it (`LANGUAGE_CODE_TOKENIZERS`).
  mBART-50, M2M100 and NLLB also need generation forced to start with the target code.
- T5 reads its task from a text prefix ("summarize: ", "translate English to German: "); a T5 config
  may carry its prefixes in `task_specific_params`.
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from ckadistill.config import DataArguments

logger = logging.getLogger(__name__)

T5_MODEL_TYPES = ("t5", "mt5")

# tokenizer class -> (where the codes go, whether generation must start with the target code).
# Matched by class name along the MRO, so transformers' aliases (`MBart50TokenizerFast`) and
# subclasses match too. mBART (cc25, en-ro) instead starts decoding from `decoder_start_token_id`.
LANGUAGE_CODE_TOKENIZERS: dict[str, tuple[str, bool]] = {
    "MBart50Tokenizer": ("source: [src_code] X </s>, target: [tgt_code] Y </s>", True),
    "MBartTokenizer": ("source: X </s> [src_code], target: Y </s> [tgt_code]", False),
    "M2M100Tokenizer": ("source: [__src__] X </s>, target: [__tgt__] Y </s>", True),
    "NllbTokenizer": ("source: [src_code] X </s>, target: [tgt_code] Y </s>", True),
}


# ---------------------------------------------------------------------------------------------------
# Language codes.
# ---------------------------------------------------------------------------------------------------


def language_code_tokenizer(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The `LANGUAGE_CODE_TOKENIZERS` key `tokenizer` belongs to, or None for a tokenizer without codes."""
    for cls in type(tokenizer).__mro__:
        if cls.__name__ in LANGUAGE_CODE_TOKENIZERS:
            return cls.__name__
    return None


def language_codes(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """`{language code: token id}` of a multilingual tokenizer; empty for other tokenizers.

    mBART, mBART-50 and M2M100 tokenizers expose the map as `lang_code_to_id` (M2M100's codes are
    "en", "de", ... for the tokens "__en__", "__de__"); NLLB's tokenizer in transformers 5 has no such
    map, so its codes are looked up in the vocabulary from the list transformers ships.
    """
    name = language_code_tokenizer(tokenizer)
    if name is None:
        return {}
    if name == "NllbTokenizer":
        from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

        ids = {code: tokenizer.convert_tokens_to_ids(code) for code in FAIRSEQ_LANGUAGE_CODES}
    else:
        ids = dict(tokenizer.lang_code_to_id)
    return {code: i for code, i in ids.items() if i is not None and i != tokenizer.unk_token_id}


def _check_code(code: str, codes: dict[str, int], flag: str, tokenizer_name: str) -> None:
    if code in codes:
        return
    # Same language, other spelling ("en" for "en_XX", "ro_RO" for "ro"), then similar strings.
    stem = code.split("_")[0].lower()
    close = [c for c in codes if c.split("_")[0].lower() == stem][:3]
    close = close or difflib.get_close_matches(code, list(codes), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    listed = ", ".join(sorted(codes)[:12])
    raise ValueError(
        f"--{flag} {code!r} is not a language code of the {tokenizer_name}{hint}; valid codes include "
        f"{listed}, ... ({len(codes)} in all). Pass --{flag} with one of them"
    )


def resolve_language_codes(
    tokenizer: PreTrainedTokenizerBase, data_args: DataArguments
) -> tuple[str, str] | None:
    """The checked `(source code, target code)` of a multilingual tokenizer; None for other tokenizers.

    Summarization defaults the target code to the source code; translation needs both.

    Raises:
        ValueError: a code is missing or unknown to the tokenizer (naming the flag, with valid codes).
    """
    name = language_code_tokenizer(tokenizer)
    if name is None:
        return None
    codes = language_codes(tokenizer)
    example = tokenizer.src_lang  # the tokenizer's own default, always one of its codes
    source, target = data_args.source_lang, data_args.target_lang
    if source is None:
        raise ValueError(
            f"--source_lang is required with the {name} (it marks every source with a language code): "
            f"pass e.g. --source_lang {example}"
        )
    if target is None and data_args.task == "translation":
        raise ValueError(
            f"--target_lang is required to translate with the {name} (it marks every target with a language "
            f"code): pass e.g. --target_lang {example}"
        )
    target = source if target is None else target
    _check_code(source, codes, "source_lang", name)
    _check_code(target, codes, "target_lang", name)
    return source, target


def forced_bos_token_id(
    tokenizer: PreTrainedTokenizerBase, model_config: PretrainedConfig, data_args: DataArguments
) -> int | None:
    """The target language code's token id for models whose generation must start with it.

    mBART-50, M2M100 and NLLB decode from `</s>` and need the target code forced as the first generated
    token (`generate(..., forced_bos_token_id=...)`); None for every other model. mBART (cc25, en-ro)
    starts from `model_config.decoder_start_token_id` instead: a warning says so when that is not the
    target code.

    Raises:
        ValueError: as `resolve_language_codes`.
    """
    resolved = resolve_language_codes(tokenizer, data_args)
    if resolved is None:
        return None
    target_id = language_codes(tokenizer)[resolved[1]]
    name = language_code_tokenizer(tokenizer)
    if LANGUAGE_CODE_TOKENIZERS[name][1]:
        return target_id
    start = model_config.to_dict().get("decoder_start_token_id")
    if start != target_id:
        logger.warning(
            "%s: generation starts from decoder_start_token_id=%s, not the target code %s (id %d); set "
            "model.config.decoder_start_token_id = %d before fine-tuning or generating",
            name,
            start,
            resolved[1],
            target_id,
            target_id,
        )
    return None


# ---------------------------------------------------------------------------------------------------
# Tokenizer set-up and the source prefix.
# ---------------------------------------------------------------------------------------------------


def _t5_prefix(model_config: PretrainedConfig, data_args: DataArguments) -> str:
    # transformers 5 keeps `task_specific_params` only on configs saved with it (no attribute otherwise).
    params = model_config.to_dict().get("task_specific_params") or {}
    if data_args.task == "summarization":
        key = "summarization"
    elif data_args.source_lang and data_args.target_lang:
        key = f"translation_{data_args.source_lang}_to_{data_args.target_lang}"  # e.g. translation_en_to_de
    else:
        key = None
    prefix = params.get(key, {}).get("prefix") if key else None
    if prefix is not None:
        logger.info(
            "Source prefix %r (task_specific_params[%r] of the %s config)",
            prefix,
            key,
            model_config.model_type,
        )
        return prefix
    known = [k for k, v in params.items() if isinstance(v, dict) and "prefix" in v]
    logger.warning(
        "No source prefix for this %s model (its config has task prefixes for: %s); sources go in without "
        "one. Pass --source_prefix (e.g. 'summarize: '), or --source_lang/--target_lang matching a "
        "'translation_<src>_to_<tgt>' entry",
        model_config.model_type,
        ", ".join(known) or "none",
    )
    return ""


def prepare_tokenizer(
    tokenizer: PreTrainedTokenizerBase, model_config: PretrainedConfig, data_args: DataArguments
) -> str:
    """Set a multilingual tokenizer's language codes and choose the text put before every source.

    Multilingual tokenizers (`LANGUAGE_CODE_TOKENIZERS`) get `src_lang` / `tgt_lang` from
    `--source_lang` / `--target_lang`, so `tokenizer(...)` and `tokenizer(text_target=...)` add the
    codes. The prefix is `--source_prefix` when given; else, for T5 / mT5, the prefix of the task in
    `model_config.task_specific_params` (key "summarization" or "translation_<src>_to_<tgt>") when
    there is one; else none.

    Args:
        tokenizer: changed in place (multilingual tokenizers only).
        model_config: the config of the model whose tokenizer this is (its `model_type` is read).
        data_args: `task`, `source_lang`, `target_lang`, `source_prefix` are read.

    Returns:
        The source prefix ('' for none).

    Raises:
        ValueError: a multilingual tokenizer without the codes it needs, or a code it does not know.
    """
    codes = resolve_language_codes(tokenizer, data_args)
    if codes is not None:
        tokenizer.src_lang, tokenizer.tgt_lang = codes
        name = language_code_tokenizer(tokenizer)
        logger.info("Language codes %s -> %s (%s: %s)", *codes, name, LANGUAGE_CODE_TOKENIZERS[name][0])
    elif (data_args.source_lang or data_args.target_lang) and model_config.model_type not in T5_MODEL_TYPES:
        logger.info(
            "--source_lang / --target_lang are not used: %s has no language codes", type(tokenizer).__name__
        )

    if data_args.source_prefix is not None:
        logger.info("Source prefix %r (--source_prefix)", data_args.source_prefix)
        return data_args.source_prefix
    if model_config.model_type in T5_MODEL_TYPES:
        return _t5_prefix(model_config, data_args)
    logger.info("No source prefix")
    return ""


# ---------------------------------------------------------------------------------------------------
# Texts and encoding.
# ---------------------------------------------------------------------------------------------------


def _capped(dataset: Dataset, split: str, data_args: DataArguments) -> Dataset:
    """The first `--max_train_samples` (train) or `--max_eval_samples` (other splits) rows."""
    cap = data_args.max_train_samples if split == "train" else data_args.max_eval_samples
    return dataset.select(range(cap)) if cap is not None and cap < len(dataset) else dataset


def _text(value: object, flag: str, column: str, split: str, row: int) -> str:
    """`value` as a non-blank string, or an error naming the flag, the split and the row."""
    # A csv column with no text at all loads as floats: its empty cells are NaN.
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    text = "" if missing else str(value)
    if not text.strip():
        raise ValueError(
            f"--{flag} {column!r} is empty in row {row} (counting from 0) of the {split} split: every "
            "source and target needs text. Drop or fill such rows, or pass the right --source_column / "
            "--target_column"
        )
    return text


def seq2seq_texts(raw: DatasetDict, data_args: DataArguments, split: str) -> tuple[list[str], list[str]]:
    """The sources (without prefix) and reference targets of one split, capped as `encode_seq2seq_splits` does.

    Returns:
        `(sources, references)`, two lists of the same length, row order kept.

    Raises:
        ValueError: the split does not exist, or a row has an empty source or target.
    """
    if split not in raw:
        raise ValueError(f"no {split} split: the data has {', '.join(raw)}")
    dataset = _capped(raw[split], split, data_args)
    src, tgt = data_args.source_column, data_args.target_column
    sources = [_text(v, "source_column", src, split, i) for i, v in enumerate(dataset[src])]
    references = [_text(v, "target_column", tgt, split, i) for i, v in enumerate(dataset[tgt])]
    return sources, references


def encode_seq2seq_splits(
    raw: DatasetDict,
    data_args: DataArguments,
    tokenizer: PreTrainedTokenizerBase,
    prefix: str = "",
    *,
    decoder_start_token_id: int | None = None,
) -> DatasetDict:
    """Cap sample counts, refuse empty texts, and tokenise sources and targets.

    Sources become `prefix + text`, truncated to `--max_source_length` tokens; targets are tokenised
    with `text_target=` (so a multilingual tokenizer adds the target language code) and truncated to
    `--max_target_length`. The string columns are dropped, so the splits go straight to a `Trainer`
    with `DataCollatorForSeq2Seq`; the reference texts come from `seq2seq_texts`.

    Args:
        raw: the splits from `load_raw_splits` (with `--task summarization` or `translation`).
        tokenizer: prepared with `prepare_tokenizer` (language codes set).
        prefix: the source prefix `prepare_tokenizer` returned.
        decoder_start_token_id: the model's decoder start token. A target the tokenizer opens with this
            same token (a BERT tokenizer's [CLS] in bert2bert) loses it: the decoder input already starts
            with it, and keeping it would teach the model to emit it again as its first output.

    Returns:
        Splits with exactly the columns `input_ids`, `attention_mask` and `labels`, each a list of
        token ids per row (unpadded; `labels` are the target ids, no -100 yet).

    Raises:
        ValueError: a row with an empty (or missing) source or target, naming the flag, split and row.
    """
    from datasets import DatasetDict

    src, tgt = data_args.source_column, data_args.target_column
    out = {}
    for split, dataset in raw.items():
        dataset = _capped(dataset, split, data_args)

        def encode(batch: dict, indices: list[int], split: str = split) -> dict:
            sources = [
                prefix + _text(v, "source_column", src, split, i)
                for v, i in zip(batch[src], indices, strict=True)
            ]
            targets = [
                _text(v, "target_column", tgt, split, i) for v, i in zip(batch[tgt], indices, strict=True)
            ]
            enc = tokenizer(
                sources, max_length=data_args.max_source_length, truncation=True, return_token_type_ids=False
            )
            labels = tokenizer(
                text_target=targets,
                max_length=data_args.max_target_length,
                truncation=True,
                return_token_type_ids=False,
            )
            targets_ids = labels["input_ids"]
            if decoder_start_token_id is not None:
                targets_ids = [t[1:] if t[:1] == [decoder_start_token_id] else t for t in targets_ids]
            return {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": targets_ids,
            }

        out[split] = dataset.map(
            encode,
            batched=True,
            with_indices=True,
            remove_columns=dataset.column_names,
            num_proc=data_args.preprocessing_num_workers,
            desc=f"Tokenising the {split} split",
        )
    return DatasetDict(out)
