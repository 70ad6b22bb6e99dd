"""One explicit table per model family: where width, depth, FFN and heads live in the config, and what
each weight tensor's axes mean.

Student construction reads only this table, never probes a model with `hasattr`. A family is keyed by
`config.model_type`; RoBERTa and XLM-R share BERT's weight names, mBART and Marian share BART's.
`EncoderDecoderModel` (`"encoder-decoder"`) is supported as bert2bert: its config keeps the encoder's and
the decoder's fields in two BERT sub-configs, so its field names are dotted paths (`decoder.hidden_size`),
read and written with `read_field` / `write_field`.

Axis roles (one letter per tensor axis, in `Family.weights`):

- `D` the residual stream width (`hidden_size` / `d_model`): sliced to its first `d_s` coordinates, or
  rotated into the PCA basis.
- `F` the FFN inner width: the first `f_s` neurons are kept.
- `A` the attention inner width, `heads × head_dim`: whole heads are kept (per-head slicing).
- `H` the head count itself (T5's relative attention bias, `(buckets, heads)`).
- `P` the hidden width of a pooler or classification head: sliced like `D`, never rotated, because an
  element-wise `tanh` follows it.
- `K` kept whole: vocabulary, positions, token types, labels, buckets.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

D, F, A, H, P, K = "D", "F", "A", "H", "P", "K"

Roles = tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """Config field names and weight-name patterns of one model family.

    Config fields are attribute names, or dotted paths into a sub-config (`encoder.hidden_size`).

    Attributes:
        name: the family's label in messages.
        width: config field of the residual width.
        layers: config field of the layer count per stack, `(encoder,)` or `(encoder, decoder)`.
        ffn: config field of the FFN width per stack (one entry when both stacks share it).
        heads: config field of the head count per stack (one entry when both stacks share it).
        head_dim: config field of the head dimension when the config has one (T5's `d_kv`); `None`
            means `width // heads`, and then the head count must divide the width.
        vocab: config field of the vocabulary size.
        stacks: per stack, a regex whose group 1 is the layer index in a parameter name.
        weights: `(regex, roles)` pairs, first match wins; every parameter must match one.
        norms: regex of normalisation parameters (LayerNorm weight/bias, or RMSNorm weight).
        norm_has_bias: LayerNorm (`True`, centres and has a bias) or RMSNorm (`False`, T5).
        first_layer_only: regexes of parameters held only by layer 0 of a stack (T5's relative
            attention bias); a student's layer 0 takes them from the teacher's layer 0.
        fresh: regexes of parameters a student keeps from its own initialisation (Marian's sinusoidal
            positions, which are a function of the width, not learned).
        tied_width: further config fields that hold the residual width and must equal `width`
            (bert2bert: the decoder's width, because its cross-attention reads the encoder's states,
            so one `D` role, one slice and one PCA basis serve both stacks).
        subconfigs: for a composite config, `(attribute, model_type)` of each sub-config this table
            is written for (bert2bert: a BERT encoder and a BERT decoder).
        auto_model: the `transformers` Auto class that loads the hidden-state body of a saved model of
            this family (`AutoModel` drops task heads; `EncoderDecoderModel` has no separate body).
    """

    name: str
    width: str
    layers: tuple[str, ...]
    ffn: tuple[str, ...]
    heads: tuple[str, ...]
    head_dim: str | None
    vocab: str
    stacks: tuple[tuple[str, str], ...]
    weights: tuple[tuple[str, Roles], ...]
    norms: str
    norm_has_bias: bool = True
    first_layer_only: tuple[str, ...] = ()
    fresh: tuple[str, ...] = ()
    tied_width: tuple[str, ...] = ()
    subconfigs: tuple[tuple[str, str], ...] = ()
    auto_model: str = "AutoModel"

    @property
    def is_encoder_decoder(self) -> bool:
        return len(self.layers) == 2

    def stack_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stacks)

    def ffn_field(self, stack: int) -> str:
        return self.ffn[min(stack, len(self.ffn) - 1)]

    def heads_field(self, stack: int) -> str:
        return self.heads[min(stack, len(self.heads) - 1)]

    def width_of(self, config) -> int:
        """The residual width; ValueError when a `tied_width` field disagrees with it."""
        width = int(read_field(config, self.width))
        for field in self.tied_width:
            other = int(read_field(config, field))
            if other != width:
                raise ValueError(
                    f"{self.name}: {self.width}={width} but {field}={other}; ckadistill keeps one residual "
                    "width for both stacks (the decoder's cross-attention reads the encoder's states, so "
                    "their key/value weights are cut with the same width); build the teacher with equal "
                    "encoder and decoder widths (pairs joined by an enc_to_dec_proj are not supported)"
                )
        return width

    def num_heads(self, config, stack: int) -> int:
        """The head count of one stack (0 = encoder)."""
        return int(read_field(config, self.heads_field(stack)))

    def head_size(self, config, stack: int) -> int:
        """The head dimension of one stack: the config's own field, else width // heads."""
        if self.head_dim is not None:
            return int(read_field(config, self.head_dim))
        return self.width_of(config) // self.num_heads(config, stack)

    def roles(self, name: str) -> Roles:
        """The axis roles of parameter `name`; ValueError if the table does not cover it."""
        for pattern, roles in self.weights:
            if re.search(pattern, name):
                return roles
        raise ValueError(
            f"parameter {name!r} is not covered by the {self.name} table in ckadistill/families.py; "
            "this model class is not supported for slicing (use --init random)"
        )

    def locate(self, name: str) -> tuple[int, int] | None:
        """`(stack, layer)` of a per-layer parameter (stack 0 = encoder), `None` outside the layers."""
        for stack, (_, pattern) in enumerate(self.stacks):
            found = re.search(pattern, name)
            if found:
                return stack, int(found.group(1))
        return None


def _bert_body_weights() -> tuple[tuple[str, Roles], ...]:
    """BERT's embeddings, layers and pooler (RoBERTa, XLM-R and both sides of bert2bert share them).

    A bert2bert decoder's `crossattention.*` weights match the `attention.*` rows: their key and value
    read the encoder's stream, which has the same width (`Family.tied_width`)."""
    return (
        (r"embeddings\.(word|position|token_type)_embeddings\.weight$", (K, D)),
        (r"(LayerNorm|layer_norm)\.(weight|bias)$", (D,)),
        (r"attention\.self\.(query|key|value)\.weight$", (A, D)),
        (r"attention\.self\.(query|key|value)\.bias$", (A,)),
        (r"attention\.output\.dense\.weight$", (D, A)),
        (r"attention\.output\.dense\.bias$", (D,)),
        (r"intermediate\.dense\.weight$", (F, D)),
        (r"intermediate\.dense\.bias$", (F,)),
        (r"layer\.\d+\.output\.dense\.weight$", (D, F)),
        (r"layer\.\d+\.output\.dense\.bias$", (D,)),
        (r"pooler\.dense\.weight$", (P, D)),
        (r"pooler\.dense\.bias$", (P,)),
    )


def _bert_mlm_head_weights(lm_head: str) -> tuple[tuple[str, Roles], ...]:
    """A masked-LM (or bert2bert decoder) head: a transform in the residual basis, then a tied decoder."""
    return (
        (rf"^{lm_head}\.(transform\.)?dense\.weight$", (D, D)),
        (rf"^{lm_head}\.(transform\.)?dense\.bias$", (D,)),
        (rf"^{lm_head}\.decoder\.weight$", (K, D)),
        (rf"^{lm_head}\.(decoder\.)?bias$", (K,)),
    )


def _bert_like_weights(lm_head: str) -> tuple[tuple[str, Roles], ...]:
    """BERT, RoBERTa and XLM-R: one table, the MLM head's module name aside."""
    classifiers: tuple[tuple[str, Roles], ...] = (
        # BertForSequenceClassification reads the pooler; RoBERTa's head reads the first token.
        (r"^classifier\.weight$", (K, P)),
        (r"^classifier\.bias$", (K,)),
        (r"^classifier\.dense\.weight$", (P, D)),
        (r"^classifier\.dense\.bias$", (P,)),
        (r"^classifier\.out_proj\.weight$", (K, P)),
        (r"^classifier\.out_proj\.bias$", (K,)),
    )
    return _bert_body_weights() + classifiers + _bert_mlm_head_weights(lm_head)


_BERT_STACKS = (("encoder", r"(?:^|\.)encoder\.layer\.(\d+)\."),)

_BERT = Family(
    name="bert",
    width="hidden_size",
    layers=("num_hidden_layers",),
    ffn=("intermediate_size",),
    heads=("num_attention_heads",),
    head_dim=None,
    vocab="vocab_size",
    stacks=_BERT_STACKS,
    weights=_bert_like_weights(r"cls\.predictions"),
    norms=r"LayerNorm\.(weight|bias)$",
)

_ROBERTA = Family(
    name="roberta",
    width="hidden_size",
    layers=("num_hidden_layers",),
    ffn=("intermediate_size",),
    heads=("num_attention_heads",),
    head_dim=None,
    vocab="vocab_size",
    stacks=_BERT_STACKS,
    weights=_bert_like_weights(r"lm_head"),
    norms=r"(LayerNorm|layer_norm)\.(weight|bias)$",
)

_DISTILBERT = Family(
    name="distilbert",
    width="dim",
    layers=("n_layers",),
    ffn=("hidden_dim",),
    heads=("n_heads",),
    head_dim=None,
    vocab="vocab_size",
    stacks=(("encoder", r"(?:^|\.)transformer\.layer\.(\d+)\."),),
    weights=(
        (r"embeddings\.(word|position)_embeddings\.weight$", (K, D)),
        (r"(LayerNorm|layer_norm)\.(weight|bias)$", (D,)),
        (r"attention\.(q|k|v)_lin\.weight$", (A, D)),
        (r"attention\.(q|k|v)_lin\.bias$", (A,)),
        (r"attention\.out_lin\.weight$", (D, A)),
        (r"attention\.out_lin\.bias$", (D,)),
        (r"ffn\.lin1\.weight$", (F, D)),
        (r"ffn\.lin1\.bias$", (F,)),
        (r"ffn\.lin2\.weight$", (D, F)),
        (r"ffn\.lin2\.bias$", (D,)),
        (r"^pre_classifier\.weight$", (P, D)),
        (r"^pre_classifier\.bias$", (P,)),
        (r"^classifier\.weight$", (K, P)),
        (r"^classifier\.bias$", (K,)),
        (r"^vocab_transform\.weight$", (D, D)),
        (r"^vocab_transform\.bias$", (D,)),
        (r"^vocab_projector\.weight$", (K, D)),
        (r"^vocab_projector\.bias$", (K,)),
    ),
    norms=r"(LayerNorm|layer_norm)\.(weight|bias)$",
)

_BART_WEIGHTS: tuple[tuple[str, Roles], ...] = (
    (r"(shared|embed_tokens|embed_positions)\.weight$", (K, D)),
    (r"(layernorm_embedding|layer_norm)\.(weight|bias)$", (D,)),
    (r"(self_attn|encoder_attn)\.(q|k|v)_proj\.weight$", (A, D)),
    (r"(self_attn|encoder_attn)\.(q|k|v)_proj\.bias$", (A,)),
    (r"(self_attn|encoder_attn)\.out_proj\.weight$", (D, A)),
    (r"(self_attn|encoder_attn)\.out_proj\.bias$", (D,)),
    (r"fc1\.weight$", (F, D)),
    (r"fc1\.bias$", (F,)),
    (r"fc2\.weight$", (D, F)),
    (r"fc2\.bias$", (D,)),
    (r"^classification_head\.dense\.weight$", (P, D)),
    (r"^classification_head\.dense\.bias$", (P,)),
    (r"^classification_head\.out_proj\.weight$", (K, P)),
    (r"^classification_head\.out_proj\.bias$", (K,)),
    (r"^lm_head\.weight$", (K, D)),
    (r"^final_logits_bias$", (K, K)),
)

_BART_STACKS = (
    ("encoder", r"(?:^|\.)encoder\.layers\.(\d+)\."),
    ("decoder", r"(?:^|\.)decoder\.layers\.(\d+)\."),
)


def _bart_like(name: str, fresh: tuple[str, ...] = ()) -> Family:
    return Family(
        name=name,
        width="d_model",
        layers=("encoder_layers", "decoder_layers"),
        ffn=("encoder_ffn_dim", "decoder_ffn_dim"),
        heads=("encoder_attention_heads", "decoder_attention_heads"),
        head_dim=None,
        vocab="vocab_size",
        stacks=_BART_STACKS,
        weights=_BART_WEIGHTS,
        norms=r"(layernorm_embedding|layer_norm)\.(weight|bias)$",
        fresh=fresh,
    )


_T5 = Family(
    name="t5",
    width="d_model",
    layers=("num_layers", "num_decoder_layers"),
    ffn=("d_ff",),
    heads=("num_heads",),
    head_dim="d_kv",
    vocab="vocab_size",
    stacks=(
        ("encoder", r"(?:^|\.)encoder\.block\.(\d+)\."),
        ("decoder", r"(?:^|\.)decoder\.block\.(\d+)\."),
    ),
    weights=(
        (r"(shared|embed_tokens)\.weight$", (K, D)),
        (r"^lm_head\.weight$", (K, D)),
        (r"(SelfAttention|EncDecAttention)\.relative_attention_bias\.weight$", (K, H)),
        (r"(SelfAttention|EncDecAttention)\.(q|k|v)\.weight$", (A, D)),
        (r"(SelfAttention|EncDecAttention)\.o\.weight$", (D, A)),
        (r"layer_norm\.weight$", (D,)),
        # v1.0 has `wi` (ReLU); v1.1 and later have the gated pair `wi_0`, `wi_1`.
        (r"DenseReluDense\.(wi|wi_0|wi_1)\.weight$", (F, D)),
        (r"DenseReluDense\.wo\.weight$", (D, F)),
        (r"^classification_head\.dense\.weight$", (P, D)),
        (r"^classification_head\.dense\.bias$", (P,)),
        (r"^classification_head\.out_proj\.weight$", (K, P)),
        (r"^classification_head\.out_proj\.bias$", (K,)),
    ),
    norms=r"layer_norm\.weight$",
    norm_has_bias=False,
    first_layer_only=(r"relative_attention_bias\.weight$",),
)

# EncoderDecoderModel of a BertModel encoder and a BertLMHeadModel decoder (`is_decoder`,
# `add_cross_attention`). Parameter names start with `encoder.` (the BertModel) and `decoder.bert.` /
# `decoder.cls.`; the decoder's LM head is tied to its word embeddings when its config says so.
# transformers 5 ignores `tie_encoder_decoder` (encoder and decoder keep their own tensors).
_BERT2BERT = Family(
    name="bert2bert (encoder-decoder)",
    width="encoder.hidden_size",
    layers=("encoder.num_hidden_layers", "decoder.num_hidden_layers"),
    ffn=("encoder.intermediate_size", "decoder.intermediate_size"),
    heads=("encoder.num_attention_heads", "decoder.num_attention_heads"),
    head_dim=None,
    vocab="decoder.vocab_size",
    stacks=(
        ("encoder", r"^encoder\.encoder\.layer\.(\d+)\."),
        ("decoder", r"^decoder\.bert\.encoder\.layer\.(\d+)\."),
    ),
    weights=_bert_body_weights() + _bert_mlm_head_weights(r"decoder\.cls\.predictions"),
    norms=r"LayerNorm\.(weight|bias)$",
    tied_width=("decoder.hidden_size",),
    subconfigs=(("encoder", "bert"), ("decoder", "bert")),
    auto_model="AutoModelForSeq2SeqLM",
)

FAMILIES: dict[str, Family] = {
    "bert": _BERT,
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "distilbert": _DISTILBERT,
    "bart": _bart_like("bart"),
    "mbart": _bart_like("mbart"),
    # Marian's positions are sinusoids of the width: a narrower student computes its own.
    "marian": _bart_like("marian", fresh=(r"embed_positions\.weight$",)),
    "t5": _T5,
    "encoder-decoder": _BERT2BERT,
}


def read_field(config, field: str):
    """A config value by field name; a dotted name reads a sub-config (`decoder.hidden_size`)."""
    value = config
    for part in field.split("."):
        value = getattr(value, part)
    return value


def write_field(config, field: str, value) -> None:
    """Set a config value by field name; a dotted name writes into a sub-config."""
    *path, last = field.split(".")
    for part in path:
        config = getattr(config, part)
    setattr(config, last, value)


def get_family(config) -> Family:
    """The family table of `config.model_type`; ValueError listing the supported types otherwise (and,
    for a composite config, when its sub-configs are not the ones the table is written for)."""
    model_type = config.model_type
    if model_type not in FAMILIES:
        raise ValueError(
            f"model type {model_type!r} is not supported for student construction; "
            f"supported: {', '.join(sorted(FAMILIES))}"
        )
    family = FAMILIES[model_type]
    for attribute, expected in family.subconfigs:
        found = getattr(config, attribute).model_type
        if found != expected:
            wanted = ", ".join(f"{a} {t}" for a, t in family.subconfigs)
            raise ValueError(
                f"{model_type} with a {found!r} {attribute} is not supported for student construction; "
                f"ckadistill supports {family.name}: {wanted}"
            )
    return family


def num_encoder_layers(config) -> int:
    """Layers of the encoder (or of the only stack of an encoder-only model)."""
    return int(read_field(config, get_family(config).layers[0]))


def num_decoder_layers(config) -> int:
    """Layers of the decoder; 0 for encoder-only models."""
    family = get_family(config)
    if not family.is_encoder_decoder:
        return 0
    return int(read_field(config, family.layers[1]))
