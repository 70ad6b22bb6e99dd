"""Seq2seq data: columns, capping, empty texts, truncation, T5 prefixes, mBART / NLLB language codes."""

from __future__ import annotations

import io
import json
import logging

import pandas as pd
import pytest
from transformers import BartConfig, MBartConfig, T5Config

from ckadistill.config import DataArguments
from ckadistill.data import load_raw_splits
from ckadistill.tasks.seq2seq_data import (
    encode_seq2seq_splits,
    forced_bos_token_id,
    language_codes,
    prepare_tokenizer,
    seq2seq_texts,
)
from conftest import SENTENCES, build_tokenizer

TARGETS = [" ".join(s.split()[:3]) for s in SENTENCES]  # "the market rose", ...


def write_csv(path, sources, targets, source="source", target="target") -> str:
    pd.DataFrame({source: sources, target: targets}).to_csv(path, index=False)
    return str(path)


def data_args(tmp_path, **kwargs) -> DataArguments:
    files = {
        "train_file": write_csv(tmp_path / "train.csv", SENTENCES, TARGETS),
        "validation_file": write_csv(tmp_path / "validation.csv", SENTENCES[:4], TARGETS[:4]),
    }
    values = {"task": "summarization", "data_cache_dir": str(tmp_path / "cache"), **files, **kwargs}
    return DataArguments(**values)


# ---------------------------------------------------------------------------------------------------
# Columns, capping, empty texts, truncation.
# ---------------------------------------------------------------------------------------------------


def test_labels_are_the_tokenised_targets_and_truncation_holds(tmp_path, tokenizer):
    args = data_args(tmp_path, max_source_length=6, max_target_length=4)
    encoded = encode_seq2seq_splits(load_raw_splits(args), args, tokenizer, prefix="")
    assert set(encoded) == {"train", "validation"}
    assert len(encoded["train"]) == 10 and len(encoded["validation"]) == 4
    assert encoded["train"].column_names == ["input_ids", "attention_mask", "labels"]

    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    for row, source, target in zip(encoded["train"], SENTENCES, TARGETS, strict=True):
        words = tokenizer.convert_tokens_to_ids(target.split()[:2])  # 4 = [CLS] + 2 words + [SEP]
        assert row["labels"] == [cls, *words, sep]
        assert row["input_ids"] == [cls, *tokenizer.convert_tokens_to_ids(source.split()[:4]), sep]
        assert row["attention_mask"] == [1] * 6


def test_sample_caps_apply_to_encodings_and_texts(tmp_path, tokenizer):
    args = data_args(tmp_path, max_train_samples=3, max_eval_samples=2)
    raw = load_raw_splits(args)
    encoded = encode_seq2seq_splits(raw, args, tokenizer)
    assert len(encoded["train"]) == 3 and len(encoded["validation"]) == 2
    sources, references = seq2seq_texts(raw, args, "validation")
    assert sources == SENTENCES[:2] and references == TARGETS[:2]


def test_missing_target_column_names_the_flag(tmp_path):
    args = data_args(tmp_path, target_column="summary")
    with pytest.raises(
        ValueError, match=r"'summary' \(--target_column\) not found in the train split.*source"
    ):
        load_raw_splits(args)


def test_nested_translation_columns_are_read_with_a_dot(tmp_path):
    # WMT on the hub keeps both sides in one dict column: {"translation": {"en": ..., "ro": ...}}.
    pairs = [{"translation": {"en": f"source {i}", "ro": f"tinta {i}"}, "id": i} for i in range(3)]
    path = tmp_path / "wmt.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    args = DataArguments(
        task="translation",
        train_file=str(path),
        source_column="translation.en",
        target_column="translation.ro",
        validation_split_fraction=0.0,
        data_cache_dir=str(tmp_path / "cache"),
    )
    raw = load_raw_splits(args)
    assert raw["train"]["translation.en"] == ["source 0", "source 1", "source 2"]
    assert raw["train"]["translation.ro"] == ["tinta 0", "tinta 1", "tinta 2"]
    args.target_column = "translation.de"
    with pytest.raises(ValueError, match=r"'translation.de' \(--target_column\).*translation.ro"):
        load_raw_splits(args)


def test_classification_columns_are_still_checked(tmp_path):
    args = data_args(tmp_path, task="classification")  # no text / label columns in these files
    with pytest.raises(ValueError, match="--text_column"):
        load_raw_splits(args)


@pytest.mark.parametrize("blank", [None, "   "])
def test_empty_target_raises_with_flag_split_and_row(tmp_path, tokenizer, blank):
    targets = list(TARGETS)
    targets[2] = blank
    args = data_args(tmp_path)
    args.train_file = write_csv(tmp_path / "holes.csv", SENTENCES, targets)
    raw = load_raw_splits(args)
    with pytest.raises(ValueError, match=r"--target_column 'target' is empty in row 2 .* train split"):
        encode_seq2seq_splits(raw, args, tokenizer)
    with pytest.raises(ValueError, match=r"--target_column 'target' is empty in row 2"):
        seq2seq_texts(raw, args, "train")
    args.max_train_samples = 2  # the empty row is not used: no error
    assert len(encode_seq2seq_splits(raw, args, tokenizer)["train"]) == 2


def test_all_empty_source_column_raises(tmp_path, tokenizer):
    args = data_args(tmp_path)
    args.validation_file = write_csv(tmp_path / "blank.csv", [None] * 4, TARGETS[:4])  # loads as floats
    with pytest.raises(ValueError, match=r"--source_column 'source' is empty in row 0 .* validation split"):
        encode_seq2seq_splits(load_raw_splits(args), args, tokenizer)


# ---------------------------------------------------------------------------------------------------
# T5 prefixes.
# ---------------------------------------------------------------------------------------------------

T5_PREFIXES = {
    "summarization": {"prefix": "summarize: "},
    "translation_en_to_de": {"prefix": "translate English to German: "},
}


def test_t5_prefix_from_config_reaches_the_input_ids(tmp_path):
    tok = build_tokenizer()
    tok.add_tokens(["summarize", ":"])
    args = data_args(tmp_path, max_source_length=16)
    prefix = prepare_tokenizer(tok, T5Config(task_specific_params=T5_PREFIXES), args)
    assert prefix == "summarize: "
    encoded = encode_seq2seq_splits(load_raw_splits(args), args, tok, prefix)
    first = encoded["train"][0]["input_ids"]
    assert first[:3] == [tok.cls_token_id, *tok.convert_tokens_to_ids(["summarize", ":"])]
    assert first[3:-1] == tok.convert_tokens_to_ids(SENTENCES[0].split())


def test_prefix_choice(tmp_path, tokenizer):
    t5 = T5Config(task_specific_params=T5_PREFIXES)
    summarize = data_args(tmp_path)
    translate = data_args(tmp_path, task="translation", source_lang="en", target_lang="de")
    assert prepare_tokenizer(tokenizer, t5, translate) == "translate English to German: "
    translate.target_lang = "fr"  # no such entry: no prefix
    assert prepare_tokenizer(tokenizer, t5, translate) == ""
    assert prepare_tokenizer(tokenizer, T5Config(), summarize) == ""  # a config without task_specific_params
    assert prepare_tokenizer(tokenizer, BartConfig(task_specific_params=T5_PREFIXES), summarize) == ""
    summarize.source_prefix = "tl;dr "  # the flag wins over the config
    assert prepare_tokenizer(tokenizer, t5, summarize) == "tl;dr "


def test_tokenizer_without_language_codes(tmp_path, tokenizer):
    args = data_args(tmp_path, task="translation", source_lang="en_XX", target_lang="ro_RO")
    assert language_codes(tokenizer) == {}
    assert forced_bos_token_id(tokenizer, BartConfig(), args) is None


# ---------------------------------------------------------------------------------------------------
# Multilingual tokenizers, built offline from a sentencepiece model trained on the fixture sentences.
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spm_model() -> bytes:
    """A tiny unigram sentencepiece model trained on the fixture sentences (serialised)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 3),
        model_writer=model,
        vocab_size=80,
        model_type="unigram",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    return model.getvalue()


@pytest.fixture(scope="module")
def pieces(spm_model) -> list[tuple[str, float]]:
    """(piece, score) of `spm_model`, in sentencepiece order (<unk>, <s>, </s>, ...)."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=spm_model)
    return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def mbart50_tokenizer(pieces):
    # transformers 5: the tokenizer is built from a (piece, score) list; it reorders the specials to
    # fairseq's <s> <pad> </s> <unk> and appends the 52 language codes and <mask>.
    from transformers import MBart50Tokenizer

    return MBart50Tokenizer(vocab=pieces)


def translation_args(tmp_path, source="en_XX", target="ro_RO", **kwargs) -> DataArguments:
    return data_args(tmp_path, task="translation", source_lang=source, target_lang=target, **kwargs)


def test_mbart50_codes_lead_source_and_labels_and_force_bos(tmp_path, pieces):
    tok = mbart50_tokenizer(pieces)
    args = translation_args(tmp_path, "de_DE", "ro_RO", max_source_length=5, max_target_length=32)
    assert prepare_tokenizer(tok, MBartConfig(), args) == ""
    de, ro = tok.convert_tokens_to_ids(["de_DE", "ro_RO"])
    assert language_codes(tok)["ro_RO"] == ro and len(language_codes(tok)) == 52
    assert tok.unk_token_id not in (de, ro)

    encoded = encode_seq2seq_splits(load_raw_splits(args), args, tok)
    row = encoded["train"][0]
    assert row["input_ids"][0] == de and row["input_ids"][-1] == tok.eos_token_id
    assert len(row["input_ids"]) == 5  # truncation keeps both special tokens
    assert row["labels"][0] == ro and row["labels"][-1] == tok.eos_token_id
    assert tok.decode(row["labels"], skip_special_tokens=True) == TARGETS[0]
    assert forced_bos_token_id(tok, MBartConfig(), args) == ro


def test_mbart_cc25_codes_trail_and_no_forced_bos(tmp_path, pieces, caplog):
    from transformers import MBartTokenizer

    # mBART (cc25 / en-ro) takes the vocabulary in fairseq order; the constructor adds the codes.
    vocab = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), *pieces[3:]]
    tok = MBartTokenizer(vocab=vocab)
    args = translation_args(tmp_path, "en_XX", "ro_RO")
    prepare_tokenizer(tok, MBartConfig(), args)
    en, ro = tok.convert_tokens_to_ids(["en_XX", "ro_RO"])
    row = encode_seq2seq_splits(load_raw_splits(args), args, tok)["train"][0]
    assert row["input_ids"][-2:] == [tok.eos_token_id, en]
    assert row["labels"][-2:] == [tok.eos_token_id, ro]
    with caplog.at_level(logging.WARNING):
        assert forced_bos_token_id(tok, MBartConfig(), args) is None
    assert f"decoder_start_token_id = {ro}" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert forced_bos_token_id(tok, MBartConfig(decoder_start_token_id=ro), args) is None
    assert caplog.text == ""


def test_nllb_codes(tmp_path):
    from transformers import NllbTokenizer

    tok = NllbTokenizer()  # transformers 5 builds a vocabulary of specials and the 202 codes
    args = translation_args(tmp_path, "eng_Latn", "fra_Latn")
    prepare_tokenizer(tok, BartConfig(), args)
    fra = tok.convert_tokens_to_ids("fra_Latn")
    assert language_codes(tok)["fra_Latn"] == fra != tok.unk_token_id
    assert tok("a", text_target="b")["labels"][0] == fra
    assert forced_bos_token_id(tok, BartConfig(), args) == fra


def test_m2m100_codes(tmp_path, spm_model, pieces):
    from transformers import M2M100Config, M2M100Tokenizer

    (tmp_path / "spm.model").write_bytes(spm_model)
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({piece: 4 + i for i, (piece, _) in enumerate(pieces[3:])})
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    tok = M2M100Tokenizer(vocab_file=str(tmp_path / "vocab.json"), spm_file=str(tmp_path / "spm.model"))

    args = translation_args(tmp_path, "en", "ro")
    prepare_tokenizer(tok, M2M100Config(), args)
    en, ro = tok.convert_tokens_to_ids(["__en__", "__ro__"])  # M2M100's codes are "en", its tokens "__en__"
    assert language_codes(tok)["ro"] == ro
    row = encode_seq2seq_splits(load_raw_splits(args), args, tok)["train"][0]
    assert row["input_ids"][0] == en and row["labels"][0] == ro
    assert forced_bos_token_id(tok, M2M100Config(), args) == ro
    with pytest.raises(ValueError, match=r"--target_lang 'ro_RO' .*did you mean ro\?"):
        prepare_tokenizer(tok, M2M100Config(), translation_args(tmp_path, "en", "ro_RO"))


def test_unknown_or_missing_codes_name_the_flag(tmp_path, pieces):
    tok = mbart50_tokenizer(pieces)
    with pytest.raises(ValueError, match=r"--target_lang 'ro_RX' .*did you mean ro_RO.*en_XX.*52 in all"):
        prepare_tokenizer(tok, MBartConfig(), translation_args(tmp_path, "en_XX", "ro_RX"))
    with pytest.raises(ValueError, match=r"--target_lang 'xx'"):
        forced_bos_token_id(tok, MBartConfig(), translation_args(tmp_path, "en_XX", "xx"))
    with pytest.raises(ValueError, match=r"--source_lang 'en' .*did you mean en_XX\?"):
        prepare_tokenizer(tok, MBartConfig(), translation_args(tmp_path, "en", "ro_RO"))
    with pytest.raises(ValueError, match=r"--source_lang 'english'"):
        prepare_tokenizer(tok, MBartConfig(), translation_args(tmp_path, "english", "ro_RO"))
    with pytest.raises(ValueError, match=r"--target_lang is required .* e\.g\. --target_lang en_XX"):
        prepare_tokenizer(tok, MBartConfig(), translation_args(tmp_path, "en_XX", None))
    with pytest.raises(ValueError, match=r"--source_lang is required"):
        prepare_tokenizer(tok, MBartConfig(), data_args(tmp_path))


def test_summarization_target_code_defaults_to_the_source_code(tmp_path, pieces):
    tok = mbart50_tokenizer(pieces)
    args = data_args(tmp_path, source_lang="en_XX")
    prepare_tokenizer(tok, MBartConfig(), args)
    assert (tok.src_lang, tok.tgt_lang) == ("en_XX", "en_XX")
    assert forced_bos_token_id(tok, MBartConfig(), args) == tok.convert_tokens_to_ids("en_XX")


def test_a_target_loses_a_leading_decoder_start_token(tmp_path, tokenizer):
    # bert2bert: the decoder starts from [CLS], which the BERT tokenizer also puts before every target.
    args = data_args(tmp_path, max_source_length=6, max_target_length=4)
    raw = load_raw_splits(args)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    stripped = encode_seq2seq_splits(raw, args, tokenizer, decoder_start_token_id=cls)["train"]
    kept = encode_seq2seq_splits(raw, args, tokenizer, decoder_start_token_id=sep)["train"]
    for short, full in zip(stripped["labels"], kept["labels"], strict=True):
        assert full[0] == cls and short == full[1:]
