"""bert2bert (`EncoderDecoderModel` of two BERTs) as a student family: the weight table, the slice identity,
one width for both stacks, parameter counts, save / reload / generate, `pca` on both sides, layer maps,
the `make-student`, `layer-map` and `cka-map` commands, and the one-way `students` -> `pca_init` imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as tf

from ckadistill.analysis import layer_cka_matrix, load_cka_csv, make_batches
from ckadistill.commands import cka_map as cka_map_cmd
from ckadistill.commands.layer_map import main as layer_map_main
from ckadistill.commands.make_student import main as make_student_main
from ckadistill.families import get_family, num_decoder_layers, num_encoder_layers
from ckadistill.layer_maps import layer_map_for
from ckadistill.pca_init import pca_basis
from ckadistill.students import make_student, student_config

V, P = 100, 64  # vocabulary (the fixture tokenizer's 75 ids fit), positions
PAD, CLS, SEP = 0, 2, 3  # the fixture tokenizer's [PAD], [CLS], [SEP]


def bert2bert_config(
    width: int = 32, layers: int = 4, heads: int = 4, ffn: int = 64, decoder_width: int | None = None
) -> tf.EncoderDecoderConfig:
    """Two BertConfigs joined as `EncoderDecoderModel.from_encoder_decoder_pretrained` joins them, with the
    top-level ids `generate` needs (HF's bert2bert recipe: start with [CLS], stop at [SEP])."""

    def bert(d: int, **extra) -> tf.BertConfig:
        return tf.BertConfig(
            vocab_size=V,
            hidden_size=d,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            intermediate_size=ffn,
            max_position_embeddings=P,
            pad_token_id=PAD,
            **extra,
        )

    decoder = bert(decoder_width or width, is_decoder=True, add_cross_attention=True)
    config = tf.EncoderDecoderConfig.from_encoder_decoder_configs(
        bert(width), decoder, decoder_start_token_id=CLS, pad_token_id=PAD
    )
    config.eos_token_id = SEP
    config.vocab_size = V
    return config


def bert2bert() -> tf.EncoderDecoderModel:
    torch.manual_seed(0)
    return tf.EncoderDecoderModel(bert2bert_config()).eval()


def parameters(d: int, layers: int, f: int) -> int:
    """bert2bert's parameter count from the architecture; the decoder's LM head is tied to its embeddings."""
    embeddings = V * d + P * d + 2 * d + 2 * d  # word, position, token type, LayerNorm
    attention = 4 * (d * d + d) + 2 * d  # query, key, value, output dense, LayerNorm
    ffn = (d * f + f) + (f * d + d) + 2 * d  # intermediate, output, LayerNorm
    encoder = embeddings + layers * (attention + ffn) + (d * d + d)  # BertModel with its pooler
    lm_head = (d * d + d) + 2 * d + V  # transform dense, LayerNorm, output bias (weight tied)
    decoder = embeddings + layers * (2 * attention + ffn) + lm_head  # self- and cross-attention, no pooler
    return encoder + decoder


def batch() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[CLS, 15, 9, 24, 7, SEP], [CLS, 8, 11, SEP, PAD, PAD]])
    dec = torch.tensor([[CLS, 5, 9, 14], [CLS, 8, 11, 30]])
    return {"input_ids": ids, "attention_mask": (ids != PAD).long(), "decoder_input_ids": dec}


@pytest.fixture(scope="module")
def teacher(one_thread):
    return bert2bert()


@pytest.fixture(scope="module")
def saved_teacher(tmp_path_factory, teacher, tokenizer):
    path = tmp_path_factory.mktemp("bert2bert") / "teacher"
    teacher.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_table_covers_every_parameter(teacher):
    family = get_family(teacher.config)
    assert family is get_family(
        tf.EncoderDecoderConfig.from_encoder_decoder_configs(tf.BertConfig(), tf.BertConfig())
    )
    for name, tensor in teacher.state_dict().items():
        assert len(family.roles(name)) == tensor.dim(), name
    assert family.locate("encoder.encoder.layer.3.attention.self.key.weight") == (0, 3)
    assert family.locate("decoder.bert.encoder.layer.2.crossattention.self.key.weight") == (1, 2)
    assert family.locate("decoder.bert.embeddings.word_embeddings.weight") is None
    assert family.roles("decoder.bert.encoder.layer.0.crossattention.self.value.weight") == ("A", "D")
    assert family.roles("decoder.cls.predictions.decoder.weight") == ("K", "D")
    assert num_encoder_layers(teacher.config) == num_decoder_layers(teacher.config) == 4
    roberta2bert = tf.EncoderDecoderConfig.from_encoder_decoder_configs(tf.RobertaConfig(), tf.BertConfig())
    with pytest.raises(ValueError, match=r"'roberta' encoder is not supported.*encoder bert, decoder bert"):
        get_family(roberta2bert)


def test_slice_with_equal_shape_is_exact(teacher):
    student = make_student(teacher, init="slice")
    assert type(student) is tf.EncoderDecoderModel
    with torch.no_grad():
        expected, got = teacher(**batch()), student(**batch())
    torch.testing.assert_close(got.logits, expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(
        got.encoder_last_hidden_state, expected.encoder_last_hidden_state, rtol=0, atol=0
    )


def test_one_width_for_both_stacks(teacher):
    config = student_config(teacher.config, hidden_size=16, encoder_layers=2, decoder_layers=3)
    assert (config.encoder.hidden_size, config.decoder.hidden_size) == (16, 16)
    assert (config.encoder.num_attention_heads, config.decoder.num_attention_heads) == (2, 2)  # head dim 8
    assert (config.encoder.intermediate_size, config.decoder.intermediate_size) == (32, 32)
    assert (config.encoder.num_hidden_layers, config.decoder.num_hidden_layers) == (2, 3)
    assert teacher.config.encoder.hidden_size == 32  # the teacher's config is not touched
    mixed = bert2bert_config(decoder_width=48)  # a pair joined by an enc_to_dec_proj
    with pytest.raises(ValueError, match=r"decoder\.hidden_size=48; ckadistill keeps one residual width"):
        student_config(mixed, hidden_size=16)
    with pytest.raises(ValueError, match="--encoder-layers and --decoder-layers"):
        make_student(teacher, num_layers=2)


def test_cross_attention_is_cut_from_the_chosen_layer(teacher):
    student = make_student(teacher, hidden_size=16, encoder_layers=2, decoder_layers=2, init="slice")
    t, s = teacher.state_dict(), student.state_dict()
    # student decoder layer 0 <- teacher layer 1 (k = 2); first 2 whole heads of 8 dims, first 16 inputs
    key = "decoder.bert.encoder.layer.{}.crossattention.self.key.weight"
    torch.testing.assert_close(s[key.format(0)], t[key.format(1)][:16, :16])
    out = "decoder.bert.encoder.layer.{}.crossattention.output.dense.weight"
    torch.testing.assert_close(s[out.format(1)], t[out.format(3)][:16, :16])
    assert student.config.ckadistill["copied_teacher_layers"] == {"encoder": [1, 3], "decoder": [1, 3]}


def test_small_student_counts_saves_reloads_and_generates(teacher, tmp_path):
    student = make_student(teacher, hidden_size=16, encoder_layers=2, decoder_layers=2, init="slice")
    assert sum(p.numel() for p in teacher.parameters()) == parameters(32, 4, 64)
    assert sum(p.numel() for p in student.parameters()) == parameters(16, 2, 32)
    assert student.config.ckadistill["student_parameters"] == parameters(16, 2, 32)
    student.save_pretrained(tmp_path)
    # AutoModelForSeq2SeqLM maps "encoder-decoder" to EncoderDecoderModel (AutoModel does not map it).
    loaded, info = tf.AutoModelForSeq2SeqLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(loaded) is tf.EncoderDecoderModel
    config = loaded.config
    assert (config.decoder_start_token_id, config.pad_token_id, config.eos_token_id) == (CLS, PAD, SEP)
    assert config.vocab_size == V and config.ckadistill["init"] == "slice"
    lm_head = loaded.decoder.cls.predictions.decoder.weight
    assert lm_head.data_ptr() == loaded.decoder.bert.embeddings.word_embeddings.weight.data_ptr()
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch()).logits, student(**batch()).logits)
    inputs = batch()
    out = loaded.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"], max_new_tokens=4)
    assert out.shape[0] == 2 and 2 <= out.shape[1] <= 5
    assert out[:, 0].tolist() == [CLS, CLS]


def _mean_mapped_cka(teacher, student, batches) -> float:
    values = []
    maps = layer_map_for(teacher.config, student.config)
    for part, pairs in (("encoder", maps.encoder), ("decoder", maps.decoder)):
        matrix = layer_cka_matrix(teacher, student, batches, part=part)
        values += [matrix[t, s] for s, t in pairs]
    return float(np.mean(values))


def test_pca_on_both_sides_starts_closer_than_random(teacher, tokenizer, sentences):
    shrink = {"hidden_size": 16, "encoder_layers": 2, "decoder_layers": 2}
    pca = make_student(teacher, **shrink, init="pca", init_texts=sentences, tokenizer=tokenizer)
    random = make_student(teacher, **shrink, init="random")
    basis, _ = pca_basis(teacher, tokenizer, sentences, 16)  # (32, 16), the basis pca used
    t, s = teacher.state_dict(), pca.state_dict()
    for emb in (
        "encoder.embeddings.word_embeddings.weight",
        "decoder.bert.embeddings.word_embeddings.weight",
    ):
        torch.testing.assert_close(s[emb], t[emb] @ basis, atol=1e-5, rtol=1e-5)
    key = "decoder.bert.encoder.layer.{}.crossattention.self.key.weight"  # reads the encoder's stream
    torch.testing.assert_close(s[key.format(0)], (t[key.format(1)] @ basis)[:16], atol=1e-5, rtol=1e-5)
    assert all(torch.isfinite(v).all() for v in s.values())
    assert pca.config.ckadistill["pca"]["texts"] == len(sentences)

    texts = [*sentences[5:], *sentences[:5]]
    batches = make_batches(tokenizer, texts, None, encoder_decoder=True, batch_size=5, max_length=32)
    pca_cka, random_cka = _mean_mapped_cka(teacher, pca, batches), _mean_mapped_cka(teacher, random, batches)
    assert pca_cka > random_cka + 0.1, (pca_cka, random_cka)


def test_layer_map_for_gives_both_stacks(teacher):
    student = student_config(teacher.config, hidden_size=16, encoder_layers=2, decoder_layers=1)
    maps = layer_map_for(teacher.config, student)
    assert maps.encoder == ((0, 0), (1, 2), (2, 4))
    assert maps.decoder == ((0, 0), (1, 4))
    assert layer_map_for(teacher.config, student, decoder="last").decoder == ((1, 4),)
    with pytest.raises(ValueError, match=r"decoder layer map: .*student index 3 is out of range"):
        layer_map_for(teacher.config, student, decoder="0:0,3:4")


def test_commands_on_saved_bert2bert(saved_teacher, tokenizer, sentences, tmp_path, capsys):
    out = tmp_path / "student"
    argv = ["--teacher", str(saved_teacher), "--output", str(out), "--hidden-size", "16"]
    assert make_student_main([*argv, "--encoder-layers", "2", "--decoder-layers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "encoder layer map (student:teacher): 0:0,1:2,2:4" in printed
    assert "decoder layer map (student:teacher): 0:0,1:2,2:4" in printed
    assert tf.AutoConfig.from_pretrained(out).decoder.hidden_size == 16

    assert (
        layer_map_main(["--teacher", str(saved_teacher), "--student", str(out), "--decoder-map", "last"]) == 0
    )
    printed = capsys.readouterr().out
    assert "--encoder-map 0:0,1:2,2:4" in printed and "--decoder-map 2:4" in printed

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    cka_dir = tmp_path / "cka"
    argv = [
        "--teacher",
        str(saved_teacher),
        "--student",
        str(out),
        "--data",
        str(data),
        "--output",
        str(cka_dir),
    ]
    assert cka_map_cmd.main([*argv, "--batch-size", "5"]) == 0
    names = sorted(p.name for p in cka_dir.iterdir())
    assert names == ["decoder.csv", "decoder.png", "encoder.csv", "encoder.png"]
    encoder, decoder = load_cka_csv(cka_dir / "encoder.csv"), load_cka_csv(cka_dir / "decoder.csv")
    assert encoder.shape == decoder.shape == (5, 3)
    assert encoder[0, 0] > 0.5 and decoder[0, 0] > 0.5  # sliced embeddings resemble the teacher's
    assert "decoder: 5 teacher x 3 student hidden states" in capsys.readouterr().out


# --- the import circle -----------------------------------------------------------------------------------


def _imported_modules(module: str) -> set[str]:
    """Every `ckadistill` module a source file imports, at module level or inside functions."""
    path = Path(__file__).parents[1] / "src" / "ckadistill" / f"{module}.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n for n in names if n.startswith("ckadistill")}


def test_imports_run_one_way():
    # students -> pca_init -> slicing -> families; nothing below imports back up.
    assert "ckadistill.pca_init" in _imported_modules("students")
    assert "ckadistill.students" not in _imported_modules("pca_init")
    assert not _imported_modules("slicing") & {"ckadistill.students", "ckadistill.pca_init"}
    for first, second in (("pca_init", "students"), ("students", "pca_init")):
        code = (
            f"import sys; import ckadistill.{first}; "
            f"assert ('ckadistill.students' in sys.modules) == ({first!r} == 'students'); "
            f"import ckadistill.{second}; print('ok')"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
