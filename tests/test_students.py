"""Students of BERT-like teachers: shapes, parameter counts, the slice identity, copy, save/load, CLI."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from ckadistill.commands.make_student import main as make_student_main
from ckadistill.families import FAMILIES, get_family, num_decoder_layers, num_encoder_layers
from ckadistill.students import copy_layers, layer_map_string, make_student, slice_layers, student_config

LABELS = {0: "business", 1: "sport", 2: "tech"}


def tiny_bert(vocab_size: int = 100, layers: int = 4, width: int = 32, heads: int = 4, ffn: int = 64):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=ffn,
        max_position_embeddings=64,
        id2label=LABELS,
        label2id={v: k for k, v in LABELS.items()},
    )
    return BertForSequenceClassification(config).eval()


def bert_parameters(vocab: int, positions: int, width: int, layers: int, ffn: int, labels: int) -> int:
    """BERT-with-classifier parameter count from the architecture, independent of any model object."""
    d = width
    embeddings = vocab * d + positions * d + 2 * d + 2 * d  # word, position, token type, LayerNorm
    attention = 4 * (d * d + d) + 2 * d  # q, k, v, output dense, LayerNorm
    ffn_block = (d * ffn + ffn) + (ffn * d + d) + 2 * d  # intermediate, output, LayerNorm
    pooler = d * d + d
    classifier = labels * d + labels
    return embeddings + layers * (attention + ffn_block) + pooler + classifier


@pytest.fixture(scope="module")
def teacher():
    return tiny_bert()


def batch(tokenizer, sentences):
    return tokenizer(sentences[:4], padding=True, return_tensors="pt", return_token_type_ids=False)


# --- families ---------------------------------------------------------------------------------------


def test_family_table_and_unknown_type():
    assert get_family(BertConfig()).width == "hidden_size"
    assert set(FAMILIES) >= {"bert", "roberta", "xlm-roberta", "bart", "mbart", "t5"}
    assert num_encoder_layers(BertConfig(num_hidden_layers=5)) == 5
    assert num_decoder_layers(BertConfig()) == 0
    with pytest.raises(ValueError, match=r"supported: .*bert.*t5"):
        get_family(AutoConfig.for_model("gpt2"))


def test_every_bert_parameter_is_covered(teacher):
    family = get_family(teacher.config)
    for name, _ in teacher.named_parameters():
        roles = family.roles(name)
        assert len(roles) == teacher.state_dict()[name].dim(), name


# --- layer choices ----------------------------------------------------------------------------------


def test_slice_layers_follow_k_times_i():
    assert slice_layers(6, 3) == [1, 3, 5]  # student layer i <- teacher layer 2i (1-based)
    assert slice_layers(12, 4) == [2, 5, 8, 11]
    assert slice_layers(6, 4) == [1, 2, 4, 5]  # k = 1.5: 1.5, 3, 4.5, 6 rounded up -> 2, 3, 5, 6
    assert slice_layers(5, 5) == [0, 1, 2, 3, 4]
    for n_t in range(1, 13):
        for n_s in range(1, n_t + 1):
            chosen = slice_layers(n_t, n_s)
            assert len(set(chosen)) == n_s and chosen[-1] == n_t - 1


def test_copy_layers_match_distilbart_table():
    expected = {
        1: [0],
        2: [0, 6],
        3: [0, 6, 11],
        4: [0, 4, 8, 11],
        6: [0, 2, 4, 7, 9, 11],
        9: [0, 1, 2, 4, 5, 7, 9, 10, 11],
        12: list(range(12)),
    }
    for n_s, layers in expected.items():
        assert copy_layers(12, n_s) == layers
    assert copy_layers(6, 3) == [0, 3, 5]  # outside the table: evenly spaced, first and last kept
    assert copy_layers(4, 2) == [0, 3]


def test_layer_map_string():
    assert layer_map_string([1, 3, 5]) == "0:0,1:2,2:4,3:6"


# --- config -----------------------------------------------------------------------------------------


def test_student_config_defaults_scale_ffn_and_keep_head_dim(teacher):
    config = student_config(teacher.config, hidden_size=16, num_layers=2)
    assert (config.hidden_size, config.num_hidden_layers) == (16, 2)
    assert config.intermediate_size == 32  # FFN scales with the width
    assert config.num_attention_heads == 2  # head dimension 8 kept
    assert config.id2label == teacher.config.id2label
    assert teacher.config.hidden_size == 32  # the teacher's config is untouched


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_size": 20}, "--heads"),  # 20 is not a multiple of head dim 8
        ({"hidden_size": 24, "num_heads": 5}, "--heads 5 must divide"),
        ({"encoder_layers": 2}, "--layers"),
        ({"num_layers": 0}, "at least 1"),
    ],
)
def test_student_config_errors_name_the_flag(teacher, kwargs, message):
    with pytest.raises(ValueError, match=message):
        student_config(teacher.config, **kwargs)


def test_init_errors(teacher):
    with pytest.raises(ValueError, match="--init copy keeps the teacher's width"):
        make_student(teacher, hidden_size=16, init="copy")
    with pytest.raises(ValueError, match="--ffn-size"):
        make_student(teacher, ffn_size=128, init="slice")
    with pytest.raises(ValueError, match="--init-data"):
        make_student(teacher, hidden_size=16, init="pca")
    with pytest.raises(ValueError, match="--init must be one of"):
        make_student(teacher, init="magic")


# --- building and initialising ----------------------------------------------------------------------


def test_slice_with_equal_shape_reproduces_the_teacher(teacher, tokenizer, sentences):
    student = make_student(teacher, init="slice")
    inputs = batch(tokenizer, sentences)
    with torch.no_grad():
        expected = teacher(**inputs, output_hidden_states=True)
        got = student(**inputs, output_hidden_states=True)
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    for h_s, h_t in zip(got.hidden_states, expected.hidden_states, strict=True):
        torch.testing.assert_close(h_s, h_t, rtol=0, atol=0)


def test_slice_cuts_top_left_blocks_of_the_mapped_layers(teacher):
    student = make_student(teacher, hidden_size=16, num_layers=2, init="slice")
    t, s = teacher.state_dict(), student.state_dict()
    # student layer 1 <- teacher layer 2, layer 2 <- layer 4 (0-based: 1 and 3)
    for s_layer, t_layer in ((0, 1), (1, 3)):
        prefix_s, prefix_t = f"bert.encoder.layer.{s_layer}.", f"bert.encoder.layer.{t_layer}."
        q = t[prefix_t + "attention.self.query.weight"]
        torch.testing.assert_close(s[prefix_s + "attention.self.query.weight"], q[:16, :16])
        w1 = t[prefix_t + "intermediate.dense.weight"]
        torch.testing.assert_close(s[prefix_s + "intermediate.dense.weight"], w1[:32, :16])
        ln = t[prefix_t + "output.LayerNorm.weight"]
        torch.testing.assert_close(s[prefix_s + "output.LayerNorm.weight"], ln[:16])
    emb = t["bert.embeddings.word_embeddings.weight"]
    torch.testing.assert_close(s["bert.embeddings.word_embeddings.weight"], emb[:, :16])
    torch.testing.assert_close(s["classifier.weight"], t["classifier.weight"][:, :16])
    info = student.config.ckadistill
    assert info["copied_teacher_layers"] == {"encoder": [1, 3]}
    assert info["layer_map"] == {"encoder": "0:0,1:2,2:4"}
    assert info["shrink"]["width"] == 2.0 and info["shrink"]["encoder_depth"] == 2.0


def test_slice_keeps_whole_heads_when_head_dim_changes(teacher):
    # 32 wide, 4 heads of 8 -> 16 wide with 4 heads of 4: each head keeps its first 4 dimensions.
    student = make_student(teacher, hidden_size=16, num_heads=4, init="slice")
    q_t = teacher.state_dict()["bert.encoder.layer.0.attention.self.query.weight"]
    q_s = student.state_dict()["bert.encoder.layer.0.attention.self.query.weight"]
    expected = q_t.reshape(4, 8, 32)[:, :4, :16].reshape(16, 16)
    torch.testing.assert_close(q_s, expected)
    o_t = teacher.state_dict()["bert.encoder.layer.0.attention.output.dense.weight"]
    o_s = student.state_dict()["bert.encoder.layer.0.attention.output.dense.weight"]
    torch.testing.assert_close(o_s, o_t.reshape(32, 4, 8)[:16, :, :4].reshape(16, 16))


def test_parameter_counts_shrink_as_computed(teacher):
    student = make_student(teacher, hidden_size=16, num_layers=2, init="slice")
    expected_t = bert_parameters(100, 64, 32, 4, 64, 3)
    expected_s = bert_parameters(100, 64, 16, 2, 32, 3)
    assert sum(p.numel() for p in teacher.parameters()) == expected_t
    assert sum(p.numel() for p in student.parameters()) == expected_s
    info = student.config.ckadistill
    assert (info["teacher_parameters"], info["student_parameters"]) == (expected_t, expected_s)
    assert info["compression"] == pytest.approx(expected_t / expected_s)


def test_random_init_is_seeded_and_not_the_teacher(teacher):
    a = make_student(teacher, hidden_size=16, num_layers=2, init="random", seed=3)
    b = make_student(teacher, hidden_size=16, num_layers=2, init="random", seed=3)
    c = make_student(teacher, hidden_size=16, num_layers=2, init="slice")
    key = "bert.encoder.layer.0.attention.self.query.weight"
    torch.testing.assert_close(a.state_dict()[key], b.state_dict()[key])
    assert not torch.equal(a.state_dict()[key], c.state_dict()[key])
    assert a.config.ckadistill["init"] == "random" and a.config.ckadistill["copied_teacher_layers"] is None


def test_copy_takes_whole_alternating_layers(teacher):
    student = make_student(teacher, num_layers=2, init="copy")
    t, s = teacher.state_dict(), student.state_dict()
    for s_layer, t_layer in ((0, 0), (1, 3)):
        for suffix in ("attention.self.key.weight", "output.dense.weight", "output.LayerNorm.bias"):
            torch.testing.assert_close(
                s[f"bert.encoder.layer.{s_layer}.{suffix}"], t[f"bert.encoder.layer.{t_layer}.{suffix}"]
            )
    assert student.config.ckadistill["layer_map"] == {"encoder": "0:0,1:1,2:4"}


def test_round_trip_keeps_weights_labels_and_provenance(teacher, tokenizer, sentences, tmp_path):
    student = make_student(teacher, hidden_size=16, num_layers=2, init="slice")
    student.save_pretrained(tmp_path)
    loaded, info = AutoModelForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(loaded) is BertForSequenceClassification
    assert loaded.config.id2label == LABELS
    assert loaded.config.ckadistill == student.config.ckadistill
    inputs = batch(tokenizer, sentences)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**inputs).logits, student(**inputs).logits)


# --- CLI --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("teacher")
    tiny_bert(vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_writes_a_loadable_student_with_tokenizer(saved_teacher, tmp_path, capsys, sentences):
    out = tmp_path / "student"
    code = make_student_main(
        ["--teacher", str(saved_teacher), "--output", str(out), "--hidden-size", "16", "--layers", "2"]
    )
    assert code == 0
    assert "0:0,1:2,2:4" in capsys.readouterr().out
    student, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert student.config.hidden_size == 16 and student.config.num_hidden_layers == 2
    assert student.config.ckadistill["teacher"] == str(saved_teacher)
    tok = AutoTokenizer.from_pretrained(out)
    inputs = tok(sentences[:2], padding=True, return_tensors="pt", return_token_type_ids=False)
    assert student(**inputs).logits.shape == (2, 3)


def test_cli_reports_flag_errors(saved_teacher, tmp_path, capsys):
    code = make_student_main(
        ["--teacher", str(saved_teacher), "--output", str(tmp_path / "s"), "--decoder-layers", "2"]
    )
    assert code == 2
    assert "--layers" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
