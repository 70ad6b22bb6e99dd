"""trim-vocab: vocabulary trimming per tokenizer type, on tokenizers trained here and tiny random models.

WordPiece (BERT classifier, masked LM, bare encoder; bert2bert), byte-level BPE (BART), Unigram (T5,
and mBART-50's layout with its 52 language codes), SentencePiece-style BPE with language codes (NLLB on
an M2M100 model) and a Unigram with byte fallback. Checks: kept text round-trips and gives the same
model outputs, ids agree between tokenizer and embedding rows, special tokens and config ids follow,
unseen text still tokenises by its type's rule, the trimmed folder reloads with the Auto classes, and
the command line refuses bad input before doing any work.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from ckadistill import vocab
from ckadistill.commands import trim_vocab as cli
from conftest import SENTENCES

# The tokenizers learn from all of this; the task text is a part of it, so some tokens go.
EXTRA = [
    "quick brown foxes jumped over lazy dogs in the zoo",
    "a jazz quartet played quietly at the wedding party",
    "investors expect the central bank to raise interest rates",
]
TRAIN = SENTENCES + EXTRA
TASK = SENTENCES[:5]  # the --data texts
HELDOUT = SENTENCES[5:]  # unseen by the trimmer
LANGS = ["eng_Latn", "ron_Latn", "fra_Latn"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------------
# Tokenizers trained here
# ---------------------------------------------------------------------------------------------------


def wordpiece_tokenizer():
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(TRAIN, trainers.WordPieceTrainer(vocab_size=160, special_tokens=specials))
    return tf.BertTokenizer(vocab=tok.get_vocab())


def byte_bpe_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TRAIN, trainer)
    model = json.loads(tok.to_str())["model"]
    return tf.BartTokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]])


def unigram_tokenizer():
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(TRAIN * 3, trainer)
    pieces = [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]
    return tf.T5Tokenizer(vocab=pieces, extra_ids=2)


def nllb_tokenizer():
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=["<s>", "<pad>", "</s>", "<unk>"])
    tok.train_from_iterator(TRAIN, trainer)
    model = json.loads(tok.to_str())["model"]
    return tf.NllbTokenizer(
        vocab=model["vocab"],
        merges=[tuple(m) for m in model["merges"]],
        additional_special_tokens=list(LANGS),
        src_lang="eng_Latn",
        tgt_lang="ron_Latn",
    )


# ---------------------------------------------------------------------------------------------------
# Tiny random models
# ---------------------------------------------------------------------------------------------------


def bert(kind: str, tok):
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=len(tok) + 3,  # rows no token uses, as padded checkpoints have
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        pad_token_id=tok.pad_token_id,
        num_labels=3,
    )
    model = {"cls": tf.BertForSequenceClassification, "mlm": tf.BertForMaskedLM, "bare": tf.BertModel}[kind]
    model = model(config)
    if kind == "mlm":
        model.cls.predictions.bias.data.normal_()  # zero at init; a random bias shows it is sliced
    return model.eval()


def bart_shape(tok) -> dict:
    """Tiny BART-family kwargs (BART, mBART, M2M100) with the tokenizer's special ids."""
    return {
        "vocab_size": len(tok),
        "d_model": 16,
        "encoder_layers": 1,
        "decoder_layers": 1,
        "encoder_attention_heads": 2,
        "decoder_attention_heads": 2,
        "encoder_ffn_dim": 32,
        "decoder_ffn_dim": 32,
        "max_position_embeddings": 64,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "decoder_start_token_id": tok.eos_token_id,
    }


def bart(tok, model_class=tf.BartForConditionalGeneration, config_class=tf.BartConfig):
    torch.manual_seed(0)
    model = model_class(config_class(**bart_shape(tok), forced_eos_token_id=tok.eos_token_id))
    model.final_logits_bias.normal_()  # zero at init; a random bias shows it is sliced
    return model.eval()


def t5(tok):
    torch.manual_seed(0)
    config = tf.T5Config(
        vocab_size=len(tok),
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    return tf.T5ForConditionalGeneration(config).eval()


def m2m(tok):
    torch.manual_seed(0)
    return tf.M2M100ForConditionalGeneration(tf.M2M100Config(**bart_shape(tok))).eval()


@pytest.fixture(scope="module")
def toks():
    return {"wordpiece": wordpiece_tokenizer(), "bpe": byte_bpe_tokenizer(), "unigram": unigram_tokenizer()}


def trim(model, tok, **kwargs):
    return vocab.trim_vocabulary(model, tok, TASK, **kwargs)


def batch(tok, texts=TASK):
    return tok(texts, padding=True, return_tensors="pt")


def save_and_reload(tmp_path, model, tok, auto):
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return auto.from_pretrained(tmp_path).eval(), tf.AutoTokenizer.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------------------
# Per tokenizer type
# ---------------------------------------------------------------------------------------------------


def check_common(model, tok, new_model, new_tok, info):
    """Round trip, id agreement between tokenizer and embedding rows, special tokens, config ids."""
    kept_tokens = [t for t in tok.get_vocab() if new_tok.convert_tokens_to_ids(t) != new_tok.unk_token_id]
    assert len(new_tok) == info["new_vocab_size"] == new_model.config.vocab_size < len(tok)
    old_rows, new_rows = model.get_input_embeddings().weight, new_model.get_input_embeddings().weight
    assert new_rows.shape[0] == len(new_tok)
    for token in [*kept_tokens, tok.unk_token]:
        old_id, new_id = tok.convert_tokens_to_ids(token), new_tok.convert_tokens_to_ids(token)
        assert torch.equal(new_rows[new_id], old_rows[old_id]), token
    for text in TASK:
        assert new_tok.decode(new_tok(text).input_ids) == tok.decode(tok(text).input_ids)
    assert new_tok.all_special_tokens == tok.all_special_tokens
    for name in ("pad", "bos", "eos", "unk", "sep", "cls", "mask"):
        token = getattr(tok, f"{name}_token")
        new_id = getattr(new_tok, f"{name}_token_id")
        assert (token is None) == (new_id is None)
        if token is not None:
            assert new_tok.convert_ids_to_tokens(new_id) == token
        config_id = getattr(new_model.config, f"{name}_token_id", None)
        if getattr(model.config, f"{name}_token_id", None) is not None:
            assert new_tok.convert_ids_to_tokens(config_id) == tok.convert_ids_to_tokens(
                getattr(model.config, f"{name}_token_id")
            )
    assert info["coverage"] == 1.0  # measured on the task text itself
    assert info["new_parameters"] < info["old_parameters"]
    assert new_model.config.ckadistill["trim_vocab"] is info


@pytest.mark.parametrize("kind", ["cls", "mlm", "bare"])
def test_wordpiece_bert(toks, tmp_path, kind):
    tok = toks["wordpiece"]
    model = bert(kind, tok)
    new_model, new_tok, info = trim(model, tok)
    check_common(model, tok, new_model, new_tok, info)
    assert info["tokenizer_model"] == "WordPiece"

    auto = {
        "cls": tf.AutoModelForSequenceClassification,
        "mlm": tf.AutoModelForMaskedLM,
        "bare": tf.AutoModel,
    }
    loaded, loaded_tok = save_and_reload(tmp_path, new_model, new_tok, auto[kind])
    kept = torch.tensor(
        [tok.convert_tokens_to_ids(t) for t in loaded_tok.convert_ids_to_tokens(range(len(loaded_tok)))]
    )
    with torch.no_grad():
        old, new = model(**batch(tok)), loaded(**batch(loaded_tok))
    if kind == "cls":
        torch.testing.assert_close(new.logits, old.logits)
    elif kind == "mlm":
        torch.testing.assert_close(new.logits, old.logits[..., kept])
    else:
        torch.testing.assert_close(new.last_hidden_state, old.last_hidden_state)

    # unseen words split into kept pieces, down to characters, never [UNK]
    unseen = "quartet jazz foxes"
    assert "[UNK]" not in tok.tokenize(unseen)
    pieces = loaded_tok.tokenize(unseen)
    assert "[UNK]" not in pieces and len(pieces) >= len(tok.tokenize(unseen))
    assert loaded_tok.decode(loaded_tok(unseen).input_ids, skip_special_tokens=True) == unseen


def test_wordpiece_keeps_the_characters_of_the_data_and_ascii():
    """Single-character pieces are kept for the data's characters and printable ASCII only: a
    character neither holds (here Greek) is dropped, and a word holding it becomes [UNK]."""
    greek = ["ωμεγα και ψι", "ψι ωμεγα"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        TRAIN + greek,
        trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]),
    )
    tok = tf.BertTokenizer(vocab=tok.get_vocab())
    greek_pieces = {"ω", "ψ", "μ", "##μ"}
    assert greek_pieces <= set(tok.get_vocab())

    kept, kept_by = vocab.kept_token_ids(tok, TASK)
    kept_tokens = set(tok.convert_ids_to_tokens(kept))
    assert not greek_pieces & kept_tokens
    data_chars = set("".join(TASK).lower()) - {" "}
    ascii_chars = {c for c in vocab.PRINTABLE_ASCII if c in tok.get_vocab()}
    for c in data_chars | ascii_chars:
        assert c in kept_tokens, c
    assert kept_by["fallback"] == len(vocab.fallback_ids(tok, data_chars))
    new_tok = vocab.trim_tokenizer(tok, kept)
    assert new_tok.tokenize("ψι quartet") == ["[UNK]", *new_tok.tokenize("quartet")]
    assert "[UNK]" not in new_tok.tokenize("quartet")  # unseen, but ASCII: split into kept pieces

    kept_greek, _ = vocab.kept_token_ids(tok, TASK + greek[:1])  # Greek in the data: its pieces stay
    assert greek_pieces <= set(tok.convert_ids_to_tokens(kept_greek))


def test_byte_level_bpe_bart(toks, tmp_path):
    tok = toks["bpe"]
    model = bart(tok)
    new_model, new_tok, info = trim(model, tok)
    check_common(model, tok, new_model, new_tok, info)
    assert info["kept_by"]["fallback"] == 256
    assert new_model.get_output_embeddings().weight is new_model.get_input_embeddings().weight  # still tied

    loaded, loaded_tok = save_and_reload(tmp_path, new_model, new_tok, tf.AutoModelForSeq2SeqLM)
    kept = [tok.convert_tokens_to_ids(t) for t in loaded_tok.convert_ids_to_tokens(range(len(loaded_tok)))]
    check_seq2seq(model, tok, loaded, loaded_tok, kept)

    # any text still encodes, as bytes where no kept merge applies: no unknown token, exact round trip
    unseen = "Naïve café owners sell crème brûlée 🙂 in Zürich"
    ids = loaded_tok(unseen).input_ids
    assert loaded_tok.unk_token_id not in ids
    assert loaded_tok.decode(ids, skip_special_tokens=True) == unseen
    assert vocab.coverage(tok, loaded_tok, kept, [unseen]) < 1.0


def test_unigram_t5(toks, tmp_path):
    tok = toks["unigram"]
    model = t5(tok)
    new_model, new_tok, info = trim(model, tok)
    check_common(model, tok, new_model, new_tok, info)
    assert "<extra_id_0>" in new_tok.get_vocab()  # sentinels are special tokens: kept

    loaded, loaded_tok = save_and_reload(tmp_path, new_model, new_tok, tf.AutoModelForSeq2SeqLM)
    kept = [tok.convert_tokens_to_ids(t) for t in loaded_tok.convert_ids_to_tokens(range(len(loaded_tok)))]
    check_seq2seq(model, tok, loaded, loaded_tok, kept)

    # unseen words of seen characters split into kept pieces; a character the task never used is <unk>
    seen_chars = set("".join(TASK))
    word = "steam"  # never in the task text, made of its characters
    assert word not in " ".join(TASK).split() and set(word) <= seen_chars
    assert loaded_tok.unk_token_id not in loaded_tok(word).input_ids
    assert "z" not in seen_chars and tok.unk_token_id not in tok("zoo").input_ids  # the old one knew z
    assert loaded_tok.unk_token_id in loaded_tok("zoo").input_ids


def check_seq2seq(model, tok, new_model, new_tok, kept):
    """Same encoder output, same decoder logits on kept ids, same greedy output mapped back."""
    source = ["the market rose as shares gained", "the team won the match"]
    target = ["the bank gained", "a late goal"]
    old_in, new_in = batch(tok, source), batch(new_tok, source)
    old_labels, new_labels = batch(tok, target).input_ids, batch(new_tok, target).input_ids
    assert torch.tensor(kept)[new_labels].tolist() == old_labels.tolist()
    with torch.no_grad():
        old = model(**old_in, labels=old_labels)
        new = new_model(**new_in, labels=new_labels)
    torch.testing.assert_close(new.encoder_last_hidden_state, old.encoder_last_hidden_state)
    torch.testing.assert_close(new.logits, old.logits[..., kept])

    dropped = sorted(set(range(model.config.vocab_size)) - set(kept))
    settings = {"max_new_tokens": 6, "do_sample": False, "num_beams": 1}
    with torch.no_grad():
        old_out = model.generate(**old_in, suppress_tokens=dropped, **settings)  # old model, kept ids only
        new_out = new_model.generate(**new_in, **settings)
    assert torch.tensor(kept)[new_out].tolist() == old_out.tolist()


def test_nllb_languages_on_m2m100(tmp_path):
    tok = nllb_tokenizer()
    model = m2m(tok)
    assert sorted(vocab.language_codes(tok)) == sorted(LANGS)
    new_model, new_tok, info = trim(model, tok, languages=["ron_Latn"])
    # the tokenizer's source language comes into its post-processor: kept with the asked one
    assert info["languages"] == vocab.language_codes(new_tok) == ["eng_Latn", "ron_Latn"]
    assert "fra_Latn" not in new_tok.get_vocab()
    loaded, loaded_tok = save_and_reload(tmp_path, new_model, new_tok, tf.AutoModelForSeq2SeqLM)
    assert len(loaded_tok) == loaded.config.vocab_size
    assert loaded_tok("the team won").input_ids[0] == loaded_tok.convert_tokens_to_ids("eng_Latn")
    kept = [tok.convert_tokens_to_ids(t) for t in loaded_tok.convert_ids_to_tokens(range(len(loaded_tok)))]
    old_ids, new_ids = tok(TASK).input_ids, loaded_tok(TASK).input_ids
    assert [[kept[i] for i in ids] for ids in new_ids] == old_ids

    with pytest.raises(ValueError, match=r"unknown code.*deu_Latn.*has: eng_Latn fra_Latn ron_Latn"):
        trim(model, tok, languages=["deu_Latn"])


# ---------------------------------------------------------------------------------------------------
# Counting rules and coverage
# ---------------------------------------------------------------------------------------------------


def test_keep_top_and_min_count(toks):
    tok = toks["bpe"]
    model = bart(tok)
    _, full, _ = trim(model, tok)
    _, top, info = trim(model, tok, keep_top=300)
    assert len(top) <= 300 < len(full)
    assert info["coverage"] < 1.0
    for text in TASK + HELDOUT:  # still exact as bytes: dropped tokens fall back to kept merges
        assert top.decode(top(text).input_ids, skip_special_tokens=True) == text
    _, frequent, _ = trim(model, tok, min_count=3)
    assert len(frequent) < len(full)

    with pytest.raises(ValueError, match=r"--keep_top 100 is below the 261 tokens.*256 fallback"):
        trim(model, tok, keep_top=100)


def test_coverage_on_heldout(toks):
    tok = toks["wordpiece"]
    kept, kept_by = vocab.kept_token_ids(tok, TASK)
    new_tok = vocab.trim_tokenizer(tok, kept)
    assert vocab.coverage(tok, new_tok, kept, TASK) == 1.0
    heldout = vocab.coverage(tok, new_tok, kept, HELDOUT)
    assert 0.0 < heldout < 1.0
    assert kept_by["special"] == 5 and kept_by["data"] > 0


def test_bpe_merges_of_kept_tokens_survive(toks):
    """A kept BPE token keeps the tokens it is merged from, so kept words tokenise as before."""
    tok = toks["bpe"]
    kept, kept_by = vocab.kept_token_ids(tok, ["investors"])
    assert kept_by["data"] > len(tok.tokenize("investors"))  # the merge parents came along
    new_tok = vocab.trim_tokenizer(tok, kept)
    assert new_tok.tokenize("investors") == tok.tokenize("investors")


# ---------------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory, toks):
    folder = tmp_path_factory.mktemp("bert")
    bert("cls", toks["wordpiece"]).save_pretrained(folder)
    toks["wordpiece"].save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(toks["wordpiece"].get_vocab()))  # as old checkpoints have
    data = folder / "task.txt"
    data.write_text("\n".join(TASK))
    (folder / "heldout.txt").write_text("\n".join(HELDOUT))
    return folder


def test_cli_trims_and_saves(saved_bert, tmp_path, capsys):
    out = tmp_path / "trimmed"
    args = ["--model", str(saved_bert), "--data", str(saved_bert / "task.txt"), "--output", str(out)]
    assert cli.main([*args, "--heldout", str(saved_bert / "heldout.txt")]) == 0
    printed = capsys.readouterr().out
    assert "vocabulary: 163 ->" in printed and "parameters:" in printed and "coverage:" in printed
    assert not (out / "vocab.txt").exists() and (out / "model.safetensors").exists()
    tok = tf.AutoTokenizer.from_pretrained(out)
    model = tf.AutoModelForSequenceClassification.from_pretrained(out)
    record = model.config.ckadistill["trim_vocab"]
    assert record["new_vocab_size"] == len(tok) == model.config.vocab_size
    assert record["data_files"] == [str(saved_bert / "task.txt")] and record["coverage_on"] == "heldout"

    (out / "vocab.txt").write_text("stale")  # an earlier run's leftovers go with --overwrite_output_dir
    assert cli.main([*args, "--overwrite_output_dir", "--keep_top", "120"]) == 0
    assert not (out / "vocab.txt").exists()
    assert len(tf.AutoTokenizer.from_pretrained(out)) <= 120


def refuse(argv, capsys, *needles):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err


def test_cli_refusals(saved_bert, tmp_path, capsys):
    data = str(saved_bert / "task.txt")
    out = str(tmp_path / "out")
    base = ["--data", data, "--output", out]

    # a folder without weights, one without a tokenizer, one with a slow-only tokenizer
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((saved_bert / "config.json").read_text())
    refuse(["--model", str(no_weights), *base], capsys, "--model", "no weights")
    no_tok = tmp_path / "no_tok"
    no_tok.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tok / name).write_bytes((saved_bert / name).read_bytes())
    refuse(["--model", str(no_tok), *base], capsys, "no tokenizer", "save the model's fast tokenizer")
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    slow = tmp_path / "slow"
    slow.mkdir()
    for name in ("config.json", "model.safetensors"):
        (slow / name).write_bytes((saved_bert / name).read_bytes())
    BertTokenizerLegacy(vocab_file=str(saved_bert / "vocab.txt")).save_pretrained(slow)
    (slow / "tokenizer.json").unlink(missing_ok=True)
    refuse(["--model", str(slow), *base], capsys, "slow (Python) tokenizer", "fast")

    model = ["--model", str(saved_bert)]
    refuse([*model, *base, "--keep_top", "3"], capsys, "--keep_top 3 is below", "5 special")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    refuse([*model, "--data", str(empty), "--output", out], capsys, "--data", "no non-empty texts")
    refuse([*model, *base, "--languages", "en_XX"], capsys, "--languages", "no language-code tokens")
    refuse([*model, *base, "--min_count", "0"], capsys, "--min_count must be at least 1")

    # an existing, non-empty --output is left alone
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    refuse([*model, "--data", data, "--output", str(busy)], capsys, "--overwrite_output_dir")
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert not (tmp_path / "out").exists()


def test_cli_unknown_language(tmp_path, capsys):
    tok = nllb_tokenizer()
    m2m(tok).save_pretrained(tmp_path / "nllb")
    tok.save_pretrained(tmp_path / "nllb")
    (tmp_path / "task.txt").write_text("\n".join(TASK))
    argv = [
        "--model",
        str(tmp_path / "nllb"),
        "--data",
        str(tmp_path / "task.txt"),
        "--output",
        str(tmp_path / "o"),
    ]
    refuse([*argv, "--languages", "xx_XX"], capsys, "--languages", "xx_XX", "eng_Latn fra_Latn ron_Latn")


def mbart50_tokenizer():
    """A Unigram model trained here, laid out as mBART-50's: <s> <pad> </s> <unk>, pieces, codes, <mask>."""
    from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(
        TRAIN * 3, trainers.UnigramTrainer(vocab_size=120, special_tokens=specials, unk_token="<unk>")
    )
    pieces = [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]
    pieces += [(code, 0.0) for code in FAIRSEQ_LANGUAGE_CODES] + [("<mask>", 0.0)]
    return tf.MBart50Tokenizer(vocab=pieces, src_lang="en_XX", tgt_lang="ro_RO")


def test_mbart50_keeps_every_language_code(tmp_path):
    """MBart50Tokenizer re-adds all its codes on load: all are kept, and a subset is refused with the fix."""
    tok = mbart50_tokenizer()
    model = bart(tok, tf.MBartForConditionalGeneration, tf.MBartConfig)
    with pytest.raises(ValueError, match=r"re-adds all its 52 language codes.*leave --languages out"):
        trim(model, tok, languages=["en_XX", "ro_RO"])
    new_model, new_tok, info = trim(model, tok)
    assert info["kept_by"]["languages"] == 52 and len(info["languages"]) == 52
    loaded, loaded_tok = save_and_reload(tmp_path, new_model, new_tok, tf.AutoModelForSeq2SeqLM)
    assert len(loaded_tok) == loaded.config.vocab_size < len(tok)
    kept = [tok.convert_tokens_to_ids(t) for t in loaded_tok.convert_ids_to_tokens(range(len(loaded_tok)))]
    source, target = TASK[:2], TASK[2:4]
    old_in = tok(source, text_target=target, padding=True, return_tensors="pt")
    new_in = loaded_tok(source, text_target=target, padding=True, return_tensors="pt")
    assert torch.tensor(kept)[new_in.input_ids].tolist() == old_in.input_ids.tolist()  # en_XX prefix too
    with torch.no_grad():
        old, new = model(**old_in), loaded(**new_in)
    torch.testing.assert_close(new.logits, old.logits[..., kept])


def test_bert2bert_encoder_decoder(toks):
    """EncoderDecoderModel: both sub-configs' vocab sizes and the top-level generation ids follow."""
    tok = toks["wordpiece"]
    shape = {"vocab_size": len(tok), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}
    shape |= {"intermediate_size": 32, "pad_token_id": tok.pad_token_id}
    config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(
        tf.BertConfig(**shape), tf.BertConfig(**shape, is_decoder=True, add_cross_attention=True)
    )
    config.decoder_start_token_id, config.pad_token_id = tok.cls_token_id, tok.pad_token_id
    torch.manual_seed(0)
    model = tf.EncoderDecoderModel(config=config).eval()
    model.decoder.cls.predictions.bias.data.normal_()
    new_model, new_tok, _ = trim(model, tok)
    assert new_model.config.encoder.vocab_size == new_model.config.decoder.vocab_size == len(new_tok)
    assert new_model.config.decoder_start_token_id == new_tok.cls_token_id
    kept = [tok.convert_tokens_to_ids(t) for t in new_tok.convert_ids_to_tokens(range(len(new_tok)))]
    old_in, new_in = batch(tok), batch(new_tok)
    with torch.no_grad():
        old = model(input_ids=old_in.input_ids, attention_mask=old_in.attention_mask, labels=old_in.input_ids)
        new = new_model(
            input_ids=new_in.input_ids, attention_mask=new_in.attention_mask, labels=new_in.input_ids
        )
    torch.testing.assert_close(new.logits, old.logits[..., kept])


def test_unigram_byte_fallback_in_a_plain_fast_tokenizer():
    """A Unigram model with byte_fallback keeps its 256 <0xNN> pieces: unseen characters become bytes."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(
        TRAIN * 3, trainers.UnigramTrainer(vocab_size=80, special_tokens=["<unk>"], unk_token="<unk>")
    )
    spec = json.loads(tok.to_str())
    pieces = spec["model"]["vocab"]
    spec["model"]["vocab"] = pieces[:1] + [[f"<0x{b:02X}>", -20.0] for b in range(256)] + pieces[1:]
    spec["model"]["byte_fallback"] = True
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "ByteFallback"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
        ],
    }
    fast = tf.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)), unk_token="<unk>"
    )
    kept, kept_by = vocab.kept_token_ids(fast, TASK)
    assert kept_by["fallback"] >= 256
    new_tok = vocab.trim_tokenizer(fast, kept)
    unseen = "zoë"
    ids = new_tok(unseen).input_ids
    assert new_tok.unk_token_id not in ids and new_tok.decode(ids).strip() == unseen
