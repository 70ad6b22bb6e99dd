"""Layer maps: keyword resolution, the explicit syntax and its errors, per-config maps, and the CLI."""

from __future__ import annotations

import pytest
from transformers import BartConfig, BertConfig, T5Config

from ckadistill.commands import layer_map as layer_map_cmd
from ckadistill.layer_maps import LayerMap, format_layer_map, layer_map_for, resolve_layer_map


def bert_config(layers: int, width: int = 32) -> BertConfig:
    return BertConfig(
        vocab_size=100,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
    )


def bart_config(encoder_layers: int, decoder_layers: int, width: int = 32) -> BartConfig:
    return BartConfig(
        vocab_size=100,
        d_model=width,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width,
        max_position_embeddings=64,
    )


# --- keywords ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_student", "n_teacher", "expected"),
    [
        (3, 6, [(0, 0), (1, 2), (2, 4), (3, 6)]),
        (3, 12, [(0, 0), (1, 4), (2, 8), (3, 12)]),
        (6, 12, [(0, 0), (1, 2), (2, 4), (3, 6), (4, 8), (5, 10), (6, 12)]),
        (4, 4, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),
        (1, 5, [(0, 0), (1, 5)]),
        # k = 2.4 is not an integer: 2.4, 4.8, 7.2, 9.6, 12 round to 2, 5, 7, 10, 12.
        (5, 12, [(0, 0), (1, 2), (2, 5), (3, 7), (4, 10), (5, 12)]),
    ],
)
def test_uniform(n_student, n_teacher, expected):
    assert resolve_layer_map("uniform", n_student, n_teacher) == expected


def test_uniform_is_strictly_increasing_and_tops_meet():
    for n_teacher in range(1, 25):
        for n_student in range(1, n_teacher + 1):
            pairs = resolve_layer_map("uniform", n_student, n_teacher)
            teachers = [t for _, t in pairs]
            assert [s for s, _ in pairs] == list(range(n_student + 1))
            assert teachers == sorted(set(teachers)), pairs  # strictly increasing
            assert pairs[-1] == (n_student, n_teacher)


@pytest.mark.parametrize(
    ("n_student", "n_teacher", "expected"),
    [
        (1, 12, [(1, 12)]),
        (2, 12, [(1, 6), (2, 12)]),
        (3, 12, [(1, 4), (2, 8), (3, 12)]),
        (6, 12, [(1, 2), (2, 4), (3, 6), (4, 9), (5, 11), (6, 12)]),
        (12, 12, [(i, i) for i in range(1, 13)]),
        (3, 6, [(1, 2), (2, 5), (3, 6)]),
        (4, 16, [(1, 5), (2, 10), (3, 13), (4, 16)]),
        # Not in the table: evenly spaced teacher layers, no embedding pair.
        (4, 12, [(1, 3), (2, 6), (3, 9), (4, 12)]),
        (3, 8, [(1, 3), (2, 5), (3, 8)]),
    ],
)
def test_distilbart(n_student, n_teacher, expected):
    assert resolve_layer_map("distilbart", n_student, n_teacher) == expected


def test_last_and_none():
    assert resolve_layer_map("last", 3, 12) == [(3, 12)]
    assert resolve_layer_map("LAST", 2, 2) == [(2, 2)]
    assert resolve_layer_map("none", 3, 12) == []
    assert resolve_layer_map("none", 0, 0) == []


def test_keywords_refuse_impossible_depths():
    with pytest.raises(
        ValueError, match=r"teacher at least as deep as the student.*student with 4.*teacher with 2"
    ):
        resolve_layer_map("uniform", 4, 2)
    with pytest.raises(ValueError, match="at least as deep"):
        resolve_layer_map("distilbart", 6, 3)
    with pytest.raises(ValueError, match=r"at least one layer on each side.*use 'none'"):
        resolve_layer_map("last", 0, 6)
    with pytest.raises(ValueError, match="num_teacher_layers must be an integer >= 0"):
        resolve_layer_map("uniform", 3, -1)


# --- explicit text ----------------------------------------------------------------------------


def test_explicit_pairs_parse_and_sort():
    assert resolve_layer_map("0:0,1:2,2:4,3:6", 3, 6) == [(0, 0), (1, 2), (2, 4), (3, 6)]
    assert resolve_layer_map(" 3:6 , 1 : 2 ", 3, 6) == [(1, 2), (3, 6)]
    # A teacher layer may supervise several student layers.
    assert resolve_layer_map("1:6,2:6", 2, 6) == [(1, 6), (2, 6)]


@pytest.mark.parametrize("pairs", [[(0, 0), (1, 2), (2, 4)], [(1, 12)], [(0, 3), (2, 1), (5, 5)], []])
def test_format_parse_round_trip(pairs):
    text = format_layer_map(pairs)
    assert resolve_layer_map(text, 5, 12) == sorted(pairs)
    assert format_layer_map(resolve_layer_map(text, 5, 12)) == format_layer_map(sorted(pairs))


def test_format_layer_map_text():
    assert format_layer_map([(0, 0), (1, 2), (2, 4)]) == "0:0,1:2,2:4"
    assert format_layer_map([]) == "none"


@pytest.mark.parametrize("spec", ["1-2", "0:0,1:2:3", "a:b", "0:0,,1:2", "1:2;2:4", "uniformly"])
def test_bad_syntax_names_token_and_form(spec):
    with pytest.raises(
        ValueError, match=r"bad layer map token .* expected comma-separated STUDENT:TEACHER"
    ) as info:
        resolve_layer_map(spec, 3, 6)
    assert "'0:0,1:2,2:4'" in str(info.value)
    assert "uniform" in str(info.value)


def test_bad_syntax_shows_offending_token():
    with pytest.raises(ValueError, match=r"token '2=4' in '0:0,1:2,2=4'"):
        resolve_layer_map("0:0,1:2,2=4", 3, 6)


def test_empty_text_is_an_error():
    with pytest.raises(ValueError, match=r"empty layer map.*none"):
        resolve_layer_map("  ", 3, 6)


def test_student_index_out_of_range():
    with pytest.raises(
        ValueError, match=r"student index 4 is out of range; valid student indices are 0\.\.3"
    ):
        resolve_layer_map("0:0,4:6", 3, 6)
    with pytest.raises(ValueError, match=r"student index -1 is out of range"):
        resolve_layer_map("-1:6", 3, 6)


def test_teacher_index_out_of_range():
    with pytest.raises(
        ValueError, match=r"teacher index 7 is out of range; valid teacher indices are 0\.\.6"
    ):
        resolve_layer_map("1:7", 3, 6)


def test_student_layer_mapped_twice():
    with pytest.raises(ValueError, match=r"maps student layer 2 twice \(2:4 and 2:5\)"):
        resolve_layer_map("0:0,2:4,2:5", 3, 6)


# --- per-config maps --------------------------------------------------------------------------


def test_layer_map_for_encoder_only():
    layer_map = layer_map_for(bert_config(6), bert_config(3, width=16))
    assert layer_map == LayerMap(encoder=((0, 0), (1, 2), (2, 4), (3, 6)), decoder=())
    assert layer_map_for(bert_config(6), bert_config(3), "last").encoder == ((3, 6),)


def test_layer_map_for_encoder_decoder():
    layer_map = layer_map_for(bart_config(12, 6), bart_config(3, 2), encoder="distilbart", decoder="uniform")
    assert layer_map.encoder == ((1, 4), (2, 8), (3, 12))
    assert layer_map.decoder == ((0, 0), (1, 3), (2, 6))


def test_layer_map_for_t5_reads_its_own_fields():
    teacher = T5Config(d_model=32, d_ff=64, num_layers=4, num_decoder_layers=2, num_heads=2, d_kv=16)
    student = T5Config(d_model=16, d_ff=32, num_layers=2, num_decoder_layers=1, num_heads=2, d_kv=8)
    layer_map = layer_map_for(teacher, student)
    assert layer_map.encoder == ((0, 0), (1, 2), (2, 4))
    assert layer_map.decoder == ((0, 0), (1, 2))


def test_layer_map_for_errors_name_the_stack():
    with pytest.raises(ValueError, match=r"^decoder layer map: .*teacher index 9 is out of range"):
        layer_map_for(bart_config(4, 4), bart_config(2, 2), decoder="1:9")
    with pytest.raises(ValueError, match=r"^encoder layer map: .*maps student layer 1 twice"):
        layer_map_for(bert_config(4), bert_config(2), encoder="1:1,1:2")
    with pytest.raises(ValueError, match="have no decoder"):
        layer_map_for(bert_config(4), bert_config(2), decoder="1:2")
    with pytest.raises(ValueError, match="both must be encoder-only or both encoder-decoder"):
        layer_map_for(bart_config(4, 4), bert_config(2))


# --- CLI --------------------------------------------------------------------------------------


def test_cli_prints_encoder_only_map(tmp_path, capsys):
    bert_config(6).save_pretrained(tmp_path / "teacher")
    bert_config(3, width=16).save_pretrained(tmp_path / "student")
    rc = layer_map_cmd.main(["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "encoder: 'uniform' (student 3 layers, teacher 6 layers)" in out
    assert "--encoder-map 0:0,1:2,2:4,3:6" in out
    assert "(embeddings)" in out
    assert "decoder" not in out


def test_cli_prints_both_stacks(tmp_path, capsys):
    bart_config(12, 12).save_pretrained(tmp_path / "teacher")
    bart_config(6, 3).save_pretrained(tmp_path / "student")
    argv = ["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student")]
    rc = layer_map_cmd.main([*argv, "--encoder-map", "distilbart", "--decoder_map", "last"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "--encoder-map 1:2,2:4,3:6,4:9,5:11,6:12" in out
    assert "decoder: 'last' (student 3 layers, teacher 12 layers)" in out
    assert "--decoder-map 3:12" in out


def test_cli_reports_bad_map(tmp_path, capsys):
    bert_config(4).save_pretrained(tmp_path / "teacher")
    bert_config(2).save_pretrained(tmp_path / "student")
    argv = ["--teacher", str(tmp_path / "teacher"), "--student", str(tmp_path / "student")]
    rc = layer_map_cmd.main([*argv, "--encoder-map", "0:0,3:4"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "student index 3 is out of range; valid student indices are 0..2" in err


def test_layer_map_for_unsupported_family():
    from transformers import GPT2Config

    with pytest.raises(ValueError, match=r"'gpt2' is not supported.*supported: .*bert"):
        layer_map_for(GPT2Config(n_layer=2), GPT2Config(n_layer=1))
