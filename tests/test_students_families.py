"""Students of every supported family: coverage of the weight table, parameter counts, save/load,
forward and generate, the slice identity, T5's relative attention bias and classification heads."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from ckadistill.families import get_family, num_decoder_layers, num_encoder_layers
from ckadistill.students import make_student

V, P = 60, 64  # vocabulary, positions
LABELS = {0: "neg", 1: "pos"}
SPECIALS = {"pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "decoder_start_token_id": 2}


def _bart_kwargs(width: int, layers: int, heads: int, ffn: int) -> dict:
    return {
        "vocab_size": V,
        "d_model": width,
        "encoder_layers": layers,
        "decoder_layers": layers,
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": ffn,
        "decoder_ffn_dim": ffn,
        "max_position_embeddings": P,
        **SPECIALS,
    }


def _t5_kwargs(width: int, layers: int, heads: int, ffn: int, gated: bool) -> dict:
    return {
        "vocab_size": V,
        "d_model": width,
        "d_kv": width // heads,
        "d_ff": ffn,
        "num_layers": layers,
        "num_decoder_layers": layers,
        "num_heads": heads,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "tie_word_embeddings": not gated,  # as in the released v1.0 / v1.1 checkpoints
        "pad_token_id": 0,
        "eos_token_id": 1,
        "decoder_start_token_id": 0,
    }


def build(kind: str, width: int = 32, layers: int = 4, heads: int = 4, ffn: int = 64):
    torch.manual_seed(0)
    if kind == "bart":
        return tf.BartForConditionalGeneration(tf.BartConfig(**_bart_kwargs(width, layers, heads, ffn)))
    if kind == "bart-cls":
        config = tf.BartConfig(**_bart_kwargs(width, layers, heads, ffn), id2label=LABELS)
        return tf.BartForSequenceClassification(config)
    if kind == "mbart":
        return tf.MBartForConditionalGeneration(tf.MBartConfig(**_bart_kwargs(width, layers, heads, ffn)))
    if kind == "marian":
        kwargs = {**_bart_kwargs(width, layers, heads, ffn), "pad_token_id": 1, "decoder_start_token_id": 1}
        return tf.MarianMTModel(tf.MarianConfig(**kwargs))
    if kind == "t5":
        return tf.T5ForConditionalGeneration(
            tf.T5Config(**_t5_kwargs(width, layers, heads, ffn, gated=False))
        )
    if kind == "t5-gated":
        return tf.T5ForConditionalGeneration(tf.T5Config(**_t5_kwargs(width, layers, heads, ffn, gated=True)))
    if kind == "roberta-cls":
        config = tf.RobertaConfig(
            vocab_size=V,
            hidden_size=width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=P,
            id2label=LABELS,
            pad_token_id=1,
            eos_token_id=2,
        )
        return tf.RobertaForSequenceClassification(config)
    if kind == "distilbert-cls":
        config = tf.DistilBertConfig(
            vocab_size=V,
            dim=width,
            n_layers=layers,
            n_heads=heads,
            hidden_dim=ffn,
            max_position_embeddings=P,
            pad_token_id=1,
            eos_token_id=2,
        )
        return tf.DistilBertForSequenceClassification(config)
    raise ValueError(kind)


ENC_DEC = ["bart", "bart-cls", "mbart", "marian", "t5", "t5-gated"]
ALL = [*ENC_DEC, "roberta-cls", "distilbert-cls"]


def inputs_for(model) -> dict[str, torch.Tensor]:
    """Two sequences, the second padded, each ending in EOS (BART's classification head needs it)."""
    pad, eos = model.config.pad_token_id, model.config.eos_token_id
    ids = torch.tensor([[5, 9, 14, 22, 7, eos], [8, 11, 30, eos, pad, pad]])
    batch = {"input_ids": ids, "attention_mask": (ids != pad).long()}
    if model.config.is_encoder_decoder and not isinstance(model, tf.BartForSequenceClassification):
        batch["decoder_input_ids"] = torch.tensor([[3, 5, 9, 14], [3, 8, 11, 30]])
    return batch


def shrink_kwargs(model, layers: int) -> dict:
    if model.config.is_encoder_decoder:
        return {"encoder_layers": layers, "decoder_layers": layers}
    return {"num_layers": layers}


def seq2seq_parameters(kind: str, d: int, layers: int, f: int, tied: bool = True, labels: int = 2) -> int:
    """Parameter count from the architecture (tied embeddings counted once).

    `tied`: T5's LM head shares the embedding (transformers 5 ties it even for v1.1 configs).
    """
    if kind.startswith("t5"):
        gated = kind == "t5-gated"
        ffn = (3 if gated else 2) * d * f + d  # wi (or wi_0, wi_1), wo, LayerNorm
        attention = 4 * d * d + d  # q, k, v, o with heads x d_kv = d, LayerNorm
        buckets = 8 * (d // 8)  # relative bias of block 0, heads keep d_kv = 8
        encoder = layers * (attention + ffn) + buckets + d
        decoder = layers * (2 * attention + ffn) + buckets + d
        lm_head = 0 if tied else V * d
        return V * d + encoder + decoder + lm_head
    attention = 4 * (d * d + d) + 2 * d
    ffn = (d * f + f) + (f * d + d) + 2 * d
    positions = (P + 2) * d if kind != "marian" else P * d  # BART's learned positions are offset by 2
    embedding_norm = 2 * d if kind != "marian" else 0
    final_norm = 2 * d if kind == "mbart" else 0
    encoder = positions + embedding_norm + layers * (attention + ffn) + final_norm
    decoder = positions + embedding_norm + layers * (2 * attention + ffn) + final_norm
    head = (d * d + d) + (labels * d + labels) if kind == "bart-cls" else 0
    return V * d + encoder + decoder + head


@pytest.fixture(scope="module")
def teachers():
    return {kind: build(kind).eval() for kind in ALL}


@pytest.mark.parametrize("kind", ALL)
def test_table_covers_every_parameter(teachers, kind):
    model = teachers[kind]
    family = get_family(model.config)
    for name, tensor in model.state_dict().items():
        assert len(family.roles(name)) == tensor.dim(), name
    assert num_encoder_layers(model.config) == 4
    assert num_decoder_layers(model.config) == (4 if kind in ENC_DEC else 0)


@pytest.mark.parametrize("kind", ALL)
def test_slice_with_equal_shape_is_exact(teachers, kind):
    teacher = teachers[kind]
    student = make_student(teacher, init="slice")
    batch = inputs_for(teacher)
    with torch.no_grad():
        expected, got = teacher(**batch).logits, student(**batch).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["bart", "bart-cls", "mbart", "t5", "t5-gated"])
def test_parameter_counts_shrink_as_computed(teachers, kind):
    teacher = teachers[kind]
    student = make_student(teacher, hidden_size=16, **shrink_kwargs(teacher, 2), init="slice")
    tied = teacher.config.tie_word_embeddings
    expected_s = seq2seq_parameters(kind, 16, 2, 32, tied)
    assert sum(p.numel() for p in teacher.parameters()) == seq2seq_parameters(kind, 32, 4, 64, tied)
    assert sum(p.numel() for p in student.parameters()) == expected_s
    assert student.config.ckadistill["student_parameters"] == expected_s


@pytest.mark.parametrize("kind", ALL)
@pytest.mark.parametrize("init", ["random", "slice"])
def test_round_trip_forward_and_generate(teachers, kind, init, tmp_path):
    teacher = teachers[kind]
    student = make_student(teacher, hidden_size=16, **shrink_kwargs(teacher, 2), init=init)
    assert type(student) is type(teacher)
    student.save_pretrained(tmp_path)
    auto = tf.AutoModelForSequenceClassification if "cls" in kind else tf.AutoModelForSeq2SeqLM
    loaded, info = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(loaded) is type(teacher)
    assert loaded.config.ckadistill["init"] == init
    batch = inputs_for(teacher)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, student(**batch).logits)
    if "cls" in kind:
        assert loaded.config.id2label == teacher.config.id2label
        assert loaded(**batch).logits.shape == (2, teacher.config.num_labels)
    else:
        out = loaded.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=4)
        assert out.shape[0] == 2 and out.shape[1] >= 2


@pytest.mark.parametrize("kind", ["t5", "t5-gated"])
def test_t5_first_block_gets_the_relative_attention_bias(teachers, kind):
    teacher = teachers[kind]
    student = make_student(teacher, hidden_size=16, encoder_layers=2, decoder_layers=2, init="slice")
    t, s = teacher.state_dict(), student.state_dict()
    for stack in ("encoder", "decoder"):
        key = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        torch.testing.assert_close(s[key], t[key][:, :2])  # 8 buckets x the first 2 of 4 heads
        assert f"{stack}.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in s
        # block 0 copies teacher block 1 (k = 2), whose query is cut per head
        q_t = t[f"{stack}.block.1.layer.0.SelfAttention.q.weight"]
        torch.testing.assert_close(s[f"{stack}.block.0.layer.0.SelfAttention.q.weight"], q_t[:16, :16])
    if kind == "t5-gated":
        w = t["encoder.block.3.layer.1.DenseReluDense.wi_1.weight"]
        torch.testing.assert_close(s["encoder.block.1.layer.1.DenseReluDense.wi_1.weight"], w[:32, :16])


def test_bart_classification_head_is_sliced(teachers):
    teacher = teachers["bart-cls"]
    student = make_student(teacher, hidden_size=16, encoder_layers=2, decoder_layers=2, init="slice")
    t, s = teacher.state_dict(), student.state_dict()
    torch.testing.assert_close(
        s["classification_head.dense.weight"], t["classification_head.dense.weight"][:16, :16]
    )
    torch.testing.assert_close(
        s["classification_head.out_proj.weight"], t["classification_head.out_proj.weight"][:, :16]
    )
    assert student.config.id2label == LABELS


def test_encoder_decoder_depths(teachers):
    teacher = teachers["bart"]
    student = make_student(teacher, encoder_layers=3, decoder_layers=1, init="copy")
    info = student.config.ckadistill
    assert info["copied_teacher_layers"] == {"encoder": [0, 2, 3], "decoder": [0]}
    assert info["layer_map"] == {"encoder": "0:0,1:1,2:3,3:4", "decoder": "0:0,1:1"}
    t, s = teacher.state_dict(), student.state_dict()
    key = "model.encoder.layers.{}.fc1.weight"
    torch.testing.assert_close(s[key.format(1)], t[key.format(2)])
    with pytest.raises(ValueError, match="--encoder-layers and --decoder-layers"):
        make_student(teacher, num_layers=2)
    with pytest.raises(ValueError, match="--layers/--encoder-layers/--decoder-layers"):
        make_student(teacher, encoder_layers=6, init="slice")
