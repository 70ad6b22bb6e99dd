"""Trim a model's vocabulary to the tokens a task's text uses: embedding rows, per-token biases, config
token ids and the tokenizer, renumbered together.

In a small student most parameters are the word embedding (3.9M of 4.4M in a 2-layer, 128-wide
MiniLM student with 30k tokens), so dropping the rows no task text ever produces is how students get
much smaller.

**What is kept** (old ids, in their old order, so a token's new id is its rank among the kept ids):

- every special and added token of the tokenizer, and every id the model's config, generation config,
  post-processor or padding settings name (pad / bos / eos / decoder start / forced BOS ...);
- for tokenizers with language-code tokens (mBART, mBART-50, NLLB) the codes named by `languages`, or
  all of them when `languages` is None;
- the tokens the text produces, counted with the model's own tokenizer, with at least `min_count`
  occurrences and, with `keep_top=K`, only the most frequent ones that fit in a total of K tokens;
- what each tokenizer type needs to keep tokenising unseen text sensibly (the fallback pieces below).

**Unseen text, per tokenizer type** (the `tokenizers` model in tokenizer.json):

- WordPiece (BERT, DistilBERT): the single-character tokens and their `##` continuations of the
  characters seen in the data and of printable ASCII are kept, so an unseen word made of those
  characters splits into kept pieces, down to characters, instead of becoming [UNK]. A word with a
  character outside them becomes [UNK] (WordPiece has no per-character unknown), as a word with a
  character the original vocabulary lacks always did. BERT's vocabularies hold about 2,000 such
  pieces, mostly scripts an English task never sees; keeping all of them would spend a fifth of an
  8,000-token vocabulary on rows no task text reaches. To keep more characters, add text holding them
  to the data.
- Byte-level BPE (GPT-2 style: BART, RoBERTa): the 256 byte symbols are kept, so any text still
  encodes, as bytes where no kept merge applies, with no unknown token. A merge survives when both of
  its parts and its result are kept, and every kept token keeps the tokens it is merged from, so kept
  text goes through the same merges as before.
- BPE without byte-level pre-tokenisation (SentencePiece BPE, NLLB): single-character pieces seen in
  the data are kept (other characters become the unknown token); with `byte_fallback` the 256
  `<0xNN>` pieces are kept too, so unseen characters become bytes instead.
- Unigram / SentencePiece (T5, mBART, XLM-R): single-character pieces seen in the data are kept, so
  unseen words made of seen characters still tokenise (into shorter pieces); unseen characters become
  <unk>. With `byte_fallback` the `<0xNN>` pieces are kept as well.
- WordLevel: nothing extra; an unseen word is the unknown token, as it was before for unseen words.

Every rule keeps each kept token's own tokenisation: WordPiece's longest match, BPE's lowest-rank
merge and Unigram's best segmentation over a subset of the vocabulary that still holds the original
choice find the same pieces. `coverage` measures it: the share of tokens (of held-out text) whose
word tokenises exactly as before, new ids mapped back to old ones.

**What changes on disk.** The tokenizer is rewritten by editing the fast tokenizer's tokenizer.json
(model vocabulary, BPE merges, Unigram scores, added tokens, post-processor and padding ids) and
reloaded with the tokenizer's own class, exactly as `AutoTokenizer.from_pretrained` will load it; a
tokenizer that re-adds dropped tokens on load is refused. transformers 5 writes only tokenizer.json and
tokenizer_config.json for tokenizers-backed classes; the slow tokenizer files of `SLOW_TOKENIZER_FILES`
(vocab.txt, merges.txt, spiece.model ...), which would still describe the old vocabulary, never reach
the output. Slow-only tokenizers (M2M100, Marian) are refused.

The model is rebuilt from its config with the new `vocab_size` and loaded from the old state dict with
the vocabulary rows selected (tensors listed per `config.model_type` in `VOCAB_TENSORS`); tied
embeddings stay tied because the new model is built the same way as the old one.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ckadistill.families import read_field, write_field
from ckadistill.metrics import count_parameters

logger = logging.getLogger(__name__)

TOKENIZER_MODELS = ("WordPiece", "BPE", "Unigram", "WordLevel")
# Characters whose WordPiece pieces a trimmed vocabulary keeps even when the data lacks them.
PRINTABLE_ASCII = "".join(chr(c) for c in range(33, 127))

# Files of slow (Python / SentencePiece) tokenizers: they hold the old vocabulary, so none may sit
# beside a trimmed tokenizer.json.
SLOW_TOKENIZER_FILES = (
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "source.spm",
    "target.spm",
    "added_tokens.json",
)


# ---------------------------------------------------------------------------------------------------
# The model side: which tensors have a vocabulary axis, per family
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VocabTensors:
    """Where one family keeps its vocabulary.

    Attributes:
        tensors: `(regex on state-dict names, vocabulary axis)`; tied names are listed too.
        size_fields: config fields holding the vocabulary size (dotted for sub-configs).
    """

    tensors: tuple[tuple[str, int], ...]
    size_fields: tuple[str, ...] = ("vocab_size",)


_BERT_WORDS = (r"(^|\.)embeddings\.word_embeddings\.weight$", 0)
_SEQ2SEQ = (
    (r"(^|\.)shared\.weight$", 0),
    (r"(^|\.)embed_tokens\.weight$", 0),
    (r"^lm_head\.weight$", 0),
)

VOCAB_TENSORS: dict[str, VocabTensors] = {
    # BERT's MLM head: decoder rows tied to the word embedding, a bias per token (two names, one tensor)
    "bert": VocabTensors((_BERT_WORDS, (r"^cls\.predictions\.(decoder\.)?(weight|bias)$", 0))),
    "roberta": VocabTensors((_BERT_WORDS, (r"^lm_head\.(decoder\.)?(weight|bias)$", 0))),
    "xlm-roberta": VocabTensors((_BERT_WORDS, (r"^lm_head\.(decoder\.)?(weight|bias)$", 0))),
    "distilbert": VocabTensors((_BERT_WORDS, (r"^vocab_projector\.(weight|bias)$", 0))),
    # BART-like: `final_logits_bias` is (1, vocab)
    "bart": VocabTensors((*_SEQ2SEQ, (r"^final_logits_bias$", 1))),
    "mbart": VocabTensors((*_SEQ2SEQ, (r"^final_logits_bias$", 1))),
    "marian": VocabTensors((*_SEQ2SEQ, (r"^final_logits_bias$", 1)), ("vocab_size", "decoder_vocab_size")),
    "t5": VocabTensors(_SEQ2SEQ),
    "mt5": VocabTensors(_SEQ2SEQ),
    "m2m_100": VocabTensors(_SEQ2SEQ),  # NLLB checkpoints are M2M100 models
    "encoder-decoder": VocabTensors(
        (
            (r"^(encoder|decoder\.bert)\.embeddings\.word_embeddings\.weight$", 0),
            (r"^decoder\.cls\.predictions\.(decoder\.)?(weight|bias)$", 0),
        ),
        ("encoder.vocab_size", "decoder.vocab_size"),
    ),
}


def vocab_table(config: PretrainedConfig) -> VocabTensors:
    """The `VOCAB_TENSORS` entry of `config.model_type`; ValueError listing the supported types."""
    if config.model_type not in VOCAB_TENSORS:
        raise ValueError(
            f"model type {config.model_type!r} is not supported by trim-vocab; supported: "
            f"{', '.join(sorted(VOCAB_TENSORS))}"
        )
    if config.model_type == "marian" and not config.share_encoder_decoder_embeddings:
        raise ValueError(
            "this Marian model has separate source and target vocabularies "
            "(share_encoder_decoder_embeddings=False); trim-vocab trims one shared vocabulary only"
        )
    if config.model_type == "encoder-decoder":
        kinds = (config.encoder.model_type, config.decoder.model_type)
        if kinds != ("bert", "bert"):
            raise ValueError(
                f"trim-vocab supports bert2bert encoder-decoders only, not {kinds[0]}2{kinds[1]}"
            )
    return VOCAB_TENSORS[config.model_type]


def model_vocab_size(config: PretrainedConfig) -> int:
    return int(read_field(config, vocab_table(config).size_fields[-1]))


# Token-id fields of configs and generation configs other than `*_token_id(s)`.
_FILTERED_ID_LISTS = ("suppress_tokens", "begin_suppress_tokens")  # dropped ids can't be generated anyway


def _configs(model: PreTrainedModel) -> list:
    """The model's config, its sub-configs (bert2bert) and its generation config."""
    found = [model.config]
    found += [v for v in vars(model.config).values() if isinstance(v, PretrainedConfig)]
    if model.can_generate():
        found.append(model.generation_config)
    return found


def _ids_of(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


def config_token_ids(model: PreTrainedModel) -> dict[str, list[int]]:
    """Every token id the configs name (`pad_token_id`, `forced_bos_token_id`, ...) by field name."""
    named: dict[str, list[int]] = {}
    for config in _configs(model):
        for key, value in vars(config).items():
            if key.endswith(("_token_id", "_token_ids")) and value is not None:
                named.setdefault(key, []).extend(_ids_of(value))
            elif key == "forced_decoder_ids" and value:
                named.setdefault(key, []).extend(int(token) for _, token in value)
    return named


def _remap_config(config, new_id: dict[int, int]) -> None:
    """Rewrite the token ids of one config (recursing into sub-configs) to new ids, in place."""
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            _remap_config(value, new_id)
        elif value is None:
            continue
        elif key.endswith(("_token_id", "_token_ids")):
            setattr(config, key, new_id[value] if isinstance(value, int) else [new_id[v] for v in value])
        elif key == "forced_decoder_ids" and value:
            setattr(config, key, [[pos, new_id[token]] for pos, token in value])
        elif key in _FILTERED_ID_LISTS:
            setattr(config, key, [new_id[v] for v in value if v in new_id])
        elif key == "bad_words_ids":
            setattr(config, key, [[new_id[v] for v in seq] for seq in value if all(v in new_id for v in seq)])


def trim_model(model: PreTrainedModel, kept_ids: Sequence[int]) -> PreTrainedModel:
    """A copy of `model` with the vocabulary reduced to `kept_ids` (old ids; new id = position).

    Input and output embedding rows, per-token biases and `vocab_size` follow `VOCAB_TENSORS`; every
    token id of the config and generation config is renumbered. The new model is built from its config
    (so tying is as before) and loaded strictly, so a vocabulary tensor the table misses is an error.
    """
    table = vocab_table(model.config)
    old_size = model_vocab_size(model.config)
    new_id = {old: new for new, old in enumerate(kept_ids)}
    for field, ids in config_token_ids(model).items():
        if any(i not in new_id for i in ids):
            raise ValueError(f"the config's {field} {ids} is not among the kept token ids; keep it")
    index = torch.tensor(list(kept_ids), dtype=torch.long)
    if index.numel() and (int(index.max()) >= old_size or int(index.min()) < 0):
        raise ValueError(
            f"kept token id {int(index.max())} is outside the model's vocabulary of {old_size} rows: the "
            "tokenizer has tokens the model has no embedding for (resize the model's embeddings first)"
        )

    state = model.state_dict()
    sliced = 0
    for name, tensor in state.items():
        axis = next((a for pattern, a in table.tensors if re.search(pattern, name)), None)
        if axis is None:
            continue
        if tensor.shape[axis] != old_size:
            raise ValueError(
                f"{name} has {tensor.shape[axis]} rows on its vocabulary axis, expected {old_size}"
            )
        state[name] = tensor.index_select(axis, index.to(tensor.device))
        sliced += 1
    if not sliced:
        raise ValueError(
            f"no vocabulary tensor of {type(model).__name__} matched the {model.config.model_type} table"
        )

    config = copy.deepcopy(model.config)
    for field in table.size_fields:
        write_field(config, field, len(kept_ids))
    _remap_config(config, new_id)
    trimmed = type(model)(config)
    try:
        trimmed.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"{type(model).__name__} has a vocabulary-sized tensor that ckadistill/vocab.py VOCAB_TENSORS "
            f"does not list for {model.config.model_type!r}: {err}"
        ) from err
    if model.can_generate():
        trimmed.generation_config = copy.deepcopy(model.generation_config)
        _remap_config(trimmed.generation_config, new_id)
    return trimmed.to(device=model.device, dtype=model.dtype).eval()


# ---------------------------------------------------------------------------------------------------
# The tokenizer side: checks, language codes, fallback pieces
# ---------------------------------------------------------------------------------------------------


def tokenizer_json(tokenizer) -> dict:
    """The fast tokenizer's tokenizer.json, as a dict."""
    return json.loads(tokenizer.backend_tokenizer.to_str())


def check_tokenizer(tokenizer) -> str:
    """The tokenizer's model type (`TOKENIZER_MODELS`); ValueError for slow or unsupported tokenizers."""
    name = type(tokenizer).__name__
    if not tokenizer.is_fast:
        raise ValueError(
            f"{name} is a slow (Python) tokenizer; trim-vocab rewrites a fast tokenizer's tokenizer.json. "
            "Use a model whose tokenizer is tokenizers-backed (AutoTokenizer gives a fast one for BERT, "
            "RoBERTa, BART, T5, mBART, NLLB); M2M100 and Marian have no fast tokenizer in transformers 5"
        )
    kind = tokenizer_json(tokenizer)["model"].get("type")
    if kind not in TOKENIZER_MODELS:
        raise ValueError(
            f"{name}'s tokenizer.json model is {kind!r}; trim-vocab supports {', '.join(TOKENIZER_MODELS)}"
        )
    return kind


def _language_code_table() -> dict[str, tuple[list[str], bool]]:
    """Tokenizer class -> (its language codes, whether the class re-adds every code when it loads)."""
    from transformers.models.mbart.tokenization_mbart import FAIRSEQ_LANGUAGE_CODES as MBART
    from transformers.models.mbart50.tokenization_mbart50 import FAIRSEQ_LANGUAGE_CODES as MBART50
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES as NLLB

    return {
        "MBartTokenizer": (MBART, True),
        "MBart50Tokenizer": (MBART50, True),
        "NllbTokenizer": (NLLB, False),
    }


def language_codes(tokenizer) -> list[str]:
    """The language-code tokens the tokenizer holds ([] for tokenizers without them)."""
    codes, _ = _language_code_table().get(type(tokenizer).__name__, ([], False))
    vocab = tokenizer.get_vocab()
    return [code for code in codes if code in vocab]


def check_languages(tokenizer, languages: Sequence[str] | None) -> list[str]:
    """The language codes to keep: all of the tokenizer's when `languages` is None; ValueError for an
    unknown code, a tokenizer without codes, or a class that re-adds every code on load."""
    codes = language_codes(tokenizer)
    if languages is None:
        return codes
    name = type(tokenizer).__name__
    if not codes:
        raise ValueError(f"--languages: {name} has no language-code tokens; leave --languages out")
    unknown = [code for code in languages if code not in codes]
    if unknown:
        raise ValueError(f"--languages: unknown code(s) {', '.join(unknown)}; {name} has: {' '.join(codes)}")
    if _language_code_table()[name][1] and set(languages) != set(codes):
        raise ValueError(
            f"--languages: {name} re-adds all its {len(codes)} language codes whenever it loads, so a "
            f"trimmed vocabulary must keep them (they cost {len(codes)} embedding rows); leave --languages out"
        )
    return [code for code in codes if code in set(languages)]


def _is_byte_level(pre_tokenizer: dict | None) -> bool:
    if pre_tokenizer is None:
        return False
    if pre_tokenizer["type"] == "Sequence":
        return any(_is_byte_level(p) for p in pre_tokenizer["pretokenizers"])
    return pre_tokenizer["type"] == "ByteLevel"


def data_characters(tokenizer, texts: Iterable[str]) -> set[str]:
    """The characters of `texts` as the tokenizer's model sees them (normalised and pre-tokenised, so
    SentencePiece's `▁` and byte-level symbols are included)."""
    backend = tokenizer.backend_tokenizer
    chars: set[str] = set()
    for text in texts:
        if backend.normalizer is not None:
            text = backend.normalizer.normalize_str(text)
        pieces = (
            [text]
            if backend.pre_tokenizer is None
            else [p for p, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
        )
        chars.update("".join(pieces))
    return chars


def fallback_ids(tokenizer, charset: set[str] | None = None) -> set[int]:
    """Old ids of the pieces kept so unseen text still tokenises (module docstring, per type).

    `charset`: characters seen in the data (`data_characters`); None leaves out the pieces that depend
    on it (all but WordPiece's ASCII and byte-level BPE's bytes), for a count before the data is read.
    """
    spec = tokenizer_json(tokenizer)
    model = spec["model"]
    kind, vocab = model["type"], model["vocab"]
    if kind == "Unigram":
        vocab = {piece: i for i, (piece, _) in enumerate(vocab)}
    keep: set[str] = set()
    if kind == "WordPiece":
        prefix = model["continuing_subword_prefix"] or ""
        chars = set(PRINTABLE_ASCII) | (charset or set())
        keep = chars | ({prefix + c for c in chars} if prefix else set())
    elif kind == "BPE" and _is_byte_level(spec["pre_tokenizer"]):
        from tokenizers.pre_tokenizers import ByteLevel

        keep = set(ByteLevel.alphabet())
    elif kind in ("BPE", "Unigram") and charset is not None:
        prefix = model.get("continuing_subword_prefix") or ""
        suffix = model.get("end_of_word_suffix") or ""
        keep = set(charset) | {prefix + c for c in charset} | {c + suffix for c in charset}
    if kind in ("BPE", "Unigram") and model.get("byte_fallback"):
        keep |= {f"<0x{b:02X}>" for b in range(256)}
    return {vocab[t] for t in keep if t in vocab}


def special_ids(tokenizer, languages: Sequence[str] | None = None) -> set[int]:
    """Special and added tokens, without the language codes that `languages` leaves out."""
    ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)
    dropped = set(language_codes(tokenizer)) - set(check_languages(tokenizer, languages))
    return ids - {tokenizer.convert_tokens_to_ids(code) for code in dropped}


def _processor_ids(processor: dict | None) -> list[int]:
    """Token ids a post-processor inserts."""
    if processor is None:
        return []
    kind = processor["type"]
    if kind == "TemplateProcessing":
        return [i for special in processor["special_tokens"].values() for i in special["ids"]]
    if kind in ("BertProcessing", "RobertaProcessing"):
        return [processor["sep"][1], processor["cls"][1]]
    if kind == "Sequence":
        return [i for p in processor["processors"] for i in _processor_ids(p)]
    if kind == "ByteLevel":
        return []
    raise ValueError(f"tokenizer post-processor {kind!r} is not supported by trim-vocab")


def _remap_processor(processor: dict | None, new_id: dict[int, int]) -> None:
    if processor is None:
        return
    kind = processor["type"]
    if kind == "TemplateProcessing":
        for special in processor["special_tokens"].values():
            special["ids"] = [new_id[i] for i in special["ids"]]
    elif kind in ("BertProcessing", "RobertaProcessing"):
        for key in ("sep", "cls"):
            processor[key][1] = new_id[processor[key][1]]
    elif kind == "Sequence":
        for inner in processor["processors"]:
            _remap_processor(inner, new_id)


def tokenizer_required_ids(tokenizer) -> set[int]:
    """Ids the tokenizer inserts by itself: the post-processor's special tokens and the padding id."""
    spec = tokenizer_json(tokenizer)
    ids = set(_processor_ids(spec["post_processor"]))
    if spec["padding"] is not None:
        ids.add(spec["padding"]["pad_id"])
    return ids


# ---------------------------------------------------------------------------------------------------
# Choosing the kept tokens
# ---------------------------------------------------------------------------------------------------


def _batches(texts: Sequence[str], size: int = 512):
    for start in range(0, len(texts), size):
        yield list(texts[start : start + size])


def token_counts(tokenizer, texts: Sequence[str]) -> Counter:
    """How often each old id occurs in `texts` (no special tokens added)."""
    counts: Counter = Counter()
    for batch in _batches(texts):
        for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
            counts.update(ids)
    return counts


def _merge_parents(tokenizer) -> dict[int, set[int]]:
    """BPE: old id of a merge result -> old ids of the parts of every merge producing it ({} otherwise)."""
    model = tokenizer_json(tokenizer)["model"]
    if model["type"] != "BPE":
        return {}
    vocab, prefix = model["vocab"], model.get("continuing_subword_prefix") or ""
    parents: dict[int, set[int]] = {}
    for merge in model["merges"]:
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        result = _merged(left, right, prefix)
        if result in vocab and left in vocab and right in vocab:
            parents.setdefault(vocab[result], set()).update((vocab[left], vocab[right]))
    return parents


def _merged(left: str, right: str, prefix: str) -> str:
    """The token a BPE merge makes (the continuation prefix of the right part is dropped)."""
    return left + (right[len(prefix) :] if prefix and right.startswith(prefix) else right)


def _closure(ids: Iterable[int], parents: dict[int, set[int]], kept: set[int]) -> set[int]:
    """`ids` and, recursively, the parts of the merges that make them, minus what `kept` has."""
    todo, found = [i for i in ids if i not in kept], set()
    while todo:
        token = todo.pop()
        if token in found or token in kept:
            continue
        found.add(token)
        todo.extend(parents.get(token, ()))
    return found


def always_kept(
    tokenizer, *, languages: Sequence[str] | None = None, model: PreTrainedModel | None = None, charset=None
) -> dict[str, set[int]]:
    """The ids kept whatever the data says, by reason: `special` (and added) tokens, `languages` codes,
    `post_processor` and padding ids, `config` token ids (with `model`), `fallback` pieces."""
    codes = check_languages(tokenizer, languages)
    by_reason = {
        "special": special_ids(tokenizer, languages) - {tokenizer.convert_tokens_to_ids(c) for c in codes},
        "languages": {tokenizer.convert_tokens_to_ids(c) for c in codes},
        "post_processor": tokenizer_required_ids(tokenizer),
        "config": set(),
        "fallback": fallback_ids(tokenizer, charset),
    }
    if model is not None:
        size = len(tokenizer)
        for field, ids in config_token_ids(model).items():
            missing = [i for i in ids if not 0 <= i < size]
            if missing:
                raise ValueError(
                    f"the model's {field} names token id(s) {missing} that its tokenizer ({size} tokens) lacks"
                )
            by_reason["config"].update(ids)
    return by_reason


def check_keep_top(keep_top: int | None, by_reason: dict[str, set[int]]) -> None:
    """ValueError when `--keep_top` is smaller than what every trimmed vocabulary keeps."""
    if keep_top is None:
        return
    needed = set().union(*by_reason.values())
    if keep_top < len(needed):
        parts = ", ".join(f"{len(ids)} {reason}" for reason, ids in by_reason.items() if ids)
        raise ValueError(
            f"--keep_top {keep_top} is below the {len(needed)} tokens kept whatever the data says ({parts}); "
            f"give --keep_top {len(needed)} or more"
        )


def kept_token_ids(
    tokenizer,
    texts: Sequence[str],
    *,
    min_count: int = 1,
    keep_top: int | None = None,
    languages: Sequence[str] | None = None,
    model: PreTrainedModel | None = None,
) -> tuple[list[int], dict[str, int]]:
    """The old ids to keep, sorted, and how many each rule added (module docstring).

    Data tokens need `min_count` occurrences; with `keep_top` they are taken by frequency (ties: lower
    old id first) while the vocabulary stays within `keep_top` tokens in all. A BPE token comes with
    the tokens it is merged from. `model`: its config's token ids are kept too.
    """
    if min_count < 1:
        raise ValueError(f"--min_count must be at least 1, got {min_count}")
    if keep_top is not None and keep_top < 1:
        raise ValueError(f"--keep_top must be at least 1, got {keep_top}")
    if not texts:
        raise ValueError("no text to count tokens on: give --data files with non-empty texts")
    kind = check_tokenizer(tokenizer)
    charset = data_characters(tokenizer, texts) if kind in ("WordPiece", "BPE", "Unigram") else None
    by_reason = always_kept(tokenizer, languages=languages, model=model, charset=charset)
    check_keep_top(keep_top, by_reason)

    parents = _merge_parents(tokenizer)
    kept: set[int] = set()
    kept_by: dict[str, int] = {}
    for reason, ids in by_reason.items():
        added = _closure(ids, parents, kept)
        kept |= added
        kept_by[reason] = len(added)
    if keep_top is not None and len(kept) > keep_top:  # BPE merge parents of the required tokens
        raise ValueError(f"--keep_top {keep_top} is below the {len(kept)} tokens kept whatever the data says")
    counts = token_counts(tokenizer, texts)
    ranked = sorted((i for i, n in counts.items() if n >= min_count), key=lambda i: (-counts[i], i))
    kept_by["data"] = 0
    for token in ranked:
        added = _closure([token], parents, kept)
        if keep_top is None or len(kept) + len(added) <= keep_top:
            kept |= added
            kept_by["data"] += len(added)
    return sorted(kept), kept_by


# ---------------------------------------------------------------------------------------------------
# Rewriting the tokenizer
# ---------------------------------------------------------------------------------------------------


def _trim_model_json(model: dict, new_id: dict[int, int]) -> None:
    """Keep and renumber the tokenizers model's vocabulary (and BPE merges, Unigram unk id) in place."""
    if model["type"] == "Unigram":
        pieces = model["vocab"]
        old_ids = [i for i in range(len(pieces)) if i in new_id]
        if any(new_id[old] != new for new, old in enumerate(old_ids)):
            raise ValueError(
                "the tokenizer's added tokens sit inside its Unigram vocabulary; cannot renumber it"
            )
        model["vocab"] = [pieces[i] for i in old_ids]
        if model["unk_id"] is not None:
            model["unk_id"] = new_id[model["unk_id"]]
        return
    vocab = {token: new_id[i] for token, i in model["vocab"].items() if i in new_id}
    model["vocab"] = dict(sorted(vocab.items(), key=lambda item: item[1]))
    if model["type"] == "BPE":
        prefix = model.get("continuing_subword_prefix") or ""
        merges = [m.split(" ") if isinstance(m, str) else m for m in model["merges"]]
        model["merges"] = [
            [left, right]
            for left, right in merges
            if left in vocab and right in vocab and _merged(left, right, prefix) in vocab
        ]


def _drop_from_config(tokenizer_config: dict, dropped: set[str]) -> None:
    """Remove dropped tokens (language codes) from the extra special tokens a tokenizer re-adds on load."""
    for key in ("extra_special_tokens", "additional_special_tokens"):
        value = tokenizer_config.get(key)
        if isinstance(value, list):
            tokenizer_config[key] = [
                t for t in value if (t["content"] if isinstance(t, dict) else str(t)) not in dropped
            ]


def trim_tokenizer(tokenizer, kept_ids: Sequence[int]):
    """A tokenizer of the same class whose vocabulary is `kept_ids` (old ids), renumbered 0..n-1.

    Edits tokenizer.json (model vocabulary, merges, added tokens, post-processor, padding), saves it
    beside the tokenizer's config in a scratch folder without slow-tokenizer files and reloads it with
    the tokenizer's class, as `AutoTokenizer.from_pretrained` will. ValueError when the reloaded
    tokenizer does not hold exactly the kept tokens at their new ids.
    """
    check_tokenizer(tokenizer)
    new_id = {old: new for new, old in enumerate(kept_ids)}
    tokens = tokenizer.convert_ids_to_tokens(list(kept_ids))
    if None in tokens:
        raise ValueError(f"kept id {kept_ids[tokens.index(None)]} has no token in {type(tokenizer).__name__}")
    kept_tokens = set(tokens)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        tokenizer.save_pretrained(folder)
        spec = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        _trim_model_json(spec["model"], new_id)
        spec["added_tokens"] = [
            dict(t, id=new_id[t["id"]]) for t in spec["added_tokens"] if t["id"] in new_id
        ]
        _remap_processor(spec["post_processor"], new_id)
        if spec["padding"] is not None:
            spec["padding"]["pad_id"] = new_id[spec["padding"]["pad_id"]]
        (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")

        config_file = folder / "tokenizer_config.json"
        tokenizer_config = json.loads(config_file.read_text(encoding="utf-8"))
        dropped = {t for t in tokenizer.get_vocab() if t not in kept_tokens}
        _drop_from_config(tokenizer_config, dropped)
        config_file.write_text(json.dumps(tokenizer_config, indent=2, ensure_ascii=False), encoding="utf-8")
        for name in SLOW_TOKENIZER_FILES:
            (folder / name).unlink(missing_ok=True)
        trimmed = type(tokenizer).from_pretrained(folder)

    if len(trimmed) != len(kept_ids):
        extra = sorted(set(trimmed.get_vocab()) - kept_tokens)[:10]
        raise ValueError(
            f"{type(tokenizer).__name__} holds {len(trimmed)} tokens after reloading, not the {len(kept_ids)} "
            f"kept ones (it re-adds {', '.join(extra) or 'tokens'} when it loads); cannot trim this tokenizer"
        )
    moved = [t for new, t in enumerate(tokens) if trimmed.convert_tokens_to_ids(t) != new]
    if moved:
        raise ValueError(
            f"{type(tokenizer).__name__} puts {len(moved)} kept token(s) ({', '.join(moved[:5])}) at other ids "
            "when it reloads; cannot trim this tokenizer"
        )
    return trimmed


# ---------------------------------------------------------------------------------------------------
# Coverage and the whole operation
# ---------------------------------------------------------------------------------------------------


def _words(encoding, i: int) -> dict[int | None, list[int]]:
    """Token ids of text `i` of a batch grouped by word index."""
    words: dict[int | None, list[int]] = {}
    for token, word in zip(encoding["input_ids"][i], encoding.word_ids(i), strict=True):
        words.setdefault(word, []).append(token)
    return words


def coverage_counts(old_tok, new_tok, kept_old_ids: Sequence[int], texts: Sequence[str]) -> tuple[int, int]:
    """(tokens whose word tokenises as before, all tokens), counted in old tokens over `texts`."""
    same = total = 0
    for batch in _batches(texts):
        old = old_tok(batch, add_special_tokens=False, verbose=False)
        new = new_tok(batch, add_special_tokens=False, verbose=False)
        for i in range(len(batch)):
            new_words = _words(new, i)
            for word, ids in _words(old, i).items():
                total += len(ids)
                if [kept_old_ids[t] for t in new_words.get(word, [])] == ids:
                    same += len(ids)
    return same, total


def coverage(old_tok, new_tok, kept_old_ids: Sequence[int], texts: Sequence[str]) -> float:
    """Share of the tokens of `texts` whose word tokenises exactly as before (new ids mapped back to old
    ones through `kept_old_ids`); 1.0 for text without tokens."""
    same, total = coverage_counts(old_tok, new_tok, kept_old_ids, texts)
    return same / total if total else 1.0


def trim_vocabulary(
    model: PreTrainedModel,
    tokenizer,
    texts: Sequence[str],
    *,
    min_count: int = 1,
    keep_top: int | None = None,
    languages: Sequence[str] | None = None,
    heldout: Sequence[str] | None = None,
) -> tuple[PreTrainedModel, object, dict]:
    """Trim `model` and `tokenizer` to the vocabulary `texts` use (rules in the module docstring).

    Returns the trimmed model (eval mode, provenance in `config.ckadistill["trim_vocab"]`), the trimmed
    tokenizer and that provenance dict: sizes, parameters, kept-by rule, and coverage on `heldout`
    (else on `texts`). Neither input is changed.
    """
    vocab_table(model.config)
    kept, kept_by = kept_token_ids(
        tokenizer, texts, min_count=min_count, keep_top=keep_top, languages=languages, model=model
    )
    new_tokenizer = trim_tokenizer(tokenizer, kept)
    trimmed = trim_model(model, kept)
    measured_on = texts if heldout is None else heldout
    same, total = coverage_counts(tokenizer, new_tokenizer, kept, measured_on)
    codes = language_codes(new_tokenizer)
    asked = check_languages(tokenizer, languages)
    if set(codes) - set(asked):
        logger.info(
            "also kept language code(s) %s: the tokenizer's post-processor or the model's config uses them",
            ", ".join(sorted(set(codes) - set(asked))),
        )
    info = {
        "old_vocab_size": model_vocab_size(model.config),
        "new_vocab_size": len(kept),
        "old_parameters": count_parameters(model),
        "new_parameters": count_parameters(trimmed),
        "tokenizer_model": check_tokenizer(tokenizer),
        "min_count": min_count,
        "keep_top": keep_top,
        "languages": codes or None,
        "kept_by": kept_by,
        "texts": len(texts),
        "coverage": same / total if total else 1.0,
        "coverage_tokens": total,
        "coverage_on": "data" if heldout is None else "heldout",
    }
    previous = vars(trimmed.config).get("ckadistill") or {}
    trimmed.config.ckadistill = {**previous, "trim_vocab": info}
    logger.info(
        "vocabulary %d -> %d tokens, parameters %d -> %d, coverage %.4f on %s",
        info["old_vocab_size"],
        info["new_vocab_size"],
        info["old_parameters"],
        info["new_parameters"],
        info["coverage"],
        info["coverage_on"],
    )
    return trimmed, new_tokenizer, info


# ---------------------------------------------------------------------------------------------------
# Distilling into a trimmed student (`ckadistill distill --trim_vocab`)
# ---------------------------------------------------------------------------------------------------


def check_trim_setup(tokenizer, teacher: PreTrainedModel, keep_top: int | None) -> None:
    """Before any data is read: the teacher's family and tokenizer can be trimmed, and `--trim_keep_top`
    leaves room for the tokens every trimmed vocabulary keeps (the student has the teacher's config ids)."""
    try:
        vocab_table(teacher.config)
        check_tokenizer(tokenizer)
        check_keep_top(keep_top, always_kept(tokenizer, model=teacher))
    except ValueError as err:
        message = str(err).replace("--keep_top", "--trim_keep_top")
        raise ValueError(f"--trim_vocab: {message}") from None


def teacher_token_ids(tokenizer, reference) -> torch.Tensor:
    """`(V,)` int64: for each id of `tokenizer` (a trimmed one), the id of the same token in `reference`
    (the tokenizer it was trimmed from), so `teacher_token_ids(...)[student_ids]` are the teacher's ids."""
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    ids = reference.convert_tokens_to_ids(tokens)
    if None in ids or reference.convert_ids_to_tokens(ids) != tokens:
        missing = [
            t
            for t, i in zip(tokens, ids, strict=True)
            if i is None or reference.convert_ids_to_tokens(i) != t
        ]
        raise ValueError(
            f"{len(missing)} token(s) of the student's tokenizer ({', '.join(map(str, missing[:5]))}) are not in "
            "the teacher's: a trimmed student must be trimmed from the teacher's tokenizer"
        )
    return torch.tensor(ids, dtype=torch.long)


def trim_student(
    student: PreTrainedModel,
    tokenizer,
    texts: Sequence[str],
    *,
    min_count: int = 1,
    keep_top: int | None = None,
    heldout: Sequence[str] | None = None,
) -> tuple[PreTrainedModel, object, torch.Tensor, dict]:
    """A student (built from the teacher, so sharing its tokenizer) trimmed to the vocabulary of `texts`.

    Returns the trimmed student, its tokenizer, the `(V_s,)` teacher id of each student id
    (`teacher_token_ids`) and the `trim_vocab` record (as `trim_vocabulary`; coverage on `heldout`, the
    validation texts, when given). Every language code is kept, so any --source_lang / --target_lang works.
    """
    trimmed, new_tokenizer, info = trim_vocabulary(
        student, tokenizer, texts, min_count=min_count, keep_top=keep_top, heldout=heldout
    )
    info["coverage_on"] = "validation texts" if heldout is not None else "training texts"
    trimmed.config.ckadistill["trim_vocab"] = info
    trimmed.train(student.training)
    return trimmed, new_tokenizer, teacher_token_ids(new_tokenizer, tokenizer), info


def trim_line(info: dict) -> str:
    """One line on a `--trim_vocab` student, for the header of its saved configuration."""
    return (
        f"--trim_vocab: vocabulary {info['old_vocab_size']:,} -> {info['new_vocab_size']:,} tokens "
        f"(--trim_min_count {info['min_count']}, --trim_keep_top {info['keep_top']}); coverage "
        f"{info['coverage']:.2%} of {info['coverage_tokens']:,} tokens of the {info['coverage_on']}"
    )
