"""The `pca` initialisation: basis, rotated weights, norm fit, and valid students of every family."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from ckadistill.commands.make_student import main as make_student_main
from ckadistill.families import get_family
from ckadistill.pca_init import pca_basis
from ckadistill.slicing import sliced_state_dict
from ckadistill.students import make_student
from test_students import tiny_bert
from test_students_families import build, inputs_for


class ShiftedTokenizer:
    """The fixture tokenizer with ids shifted into a tiny model's vocabulary (a model-agnostic stand-in)."""

    def __init__(self, tokenizer, vocab_size: int):
        self.inner, self.vocab_size = tokenizer, vocab_size
        self.pad_token = tokenizer.pad_token

    def __call__(self, texts, **kwargs):
        enc = self.inner(texts, **kwargs)
        enc["input_ids"] = enc["input_ids"] % self.vocab_size
        return enc


def test_basis_is_orthonormal_and_ordered(tokenizer, sentences):
    teacher = tiny_bert(vocab_size=len(tokenizer))
    basis, stats = pca_basis(teacher, tokenizer, sentences, 16)
    assert basis.shape == (32, 16)
    torch.testing.assert_close(basis.T @ basis, torch.eye(16), atol=1e-5, rtol=0)
    assert 16 / 32 < stats["explained_variance"] <= 1.0  # the top half holds more than half the energy
    _, full_stats = pca_basis(teacher, tokenizer, sentences, 32)
    assert full_stats["explained_variance"] == pytest.approx(1.0)
    assert stats["tokens"] == sum(len(s.split()) + 2 for s in sentences)


def test_residual_weights_are_rotated_into_the_basis():
    teacher = tiny_bert()
    student = make_student(teacher, hidden_size=16, num_layers=2, init="random")
    basis = torch.linalg.qr(torch.randn(32, 16))[0]  # (d_t, d_s) orthonormal columns
    state = sliced_state_dict(teacher, student, [[1, 3]], basis=basis)
    t = teacher.state_dict()
    emb = t["bert.embeddings.word_embeddings.weight"]
    torch.testing.assert_close(state["bert.embeddings.word_embeddings.weight"], emb @ basis)
    q = t["bert.encoder.layer.1.attention.self.query.weight"]  # (heads·head_dim, d): reads the stream
    torch.testing.assert_close(state["bert.encoder.layer.0.attention.self.query.weight"], (q @ basis)[:16])
    o = t["bert.encoder.layer.3.output.dense.weight"]  # (d, ffn): writes the stream
    torch.testing.assert_close(state["bert.encoder.layer.1.output.dense.weight"], (basis.T @ o)[:, :32])
    b = t["bert.encoder.layer.3.output.dense.bias"]
    torch.testing.assert_close(state["bert.encoder.layer.1.output.dense.bias"], basis.T @ b)
    pooler = t["bert.pooler.dense.weight"]  # (P, D): the tanh side is sliced, the stream side rotated
    torch.testing.assert_close(state["bert.pooler.dense.weight"], (pooler @ basis)[:16])


def test_full_width_pca_of_rmsnorm_model_is_an_exact_rotation(tokenizer, sentences):
    # T5's RMSNorm with unit gains commutes with a rotation, so a full-width pca student is the teacher.
    teacher = build("t5").eval()
    tok = ShiftedTokenizer(tokenizer, teacher.config.vocab_size)
    student = make_student(teacher, init="pca", init_texts=sentences, tokenizer=tok)
    norm = student.state_dict()["encoder.block.2.layer.1.layer_norm.weight"]
    torch.testing.assert_close(norm, torch.ones_like(norm), atol=1e-4, rtol=0)
    batch = inputs_for(teacher)
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, teacher(**batch).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["bart", "bart-cls", "mbart", "t5-gated", "roberta-cls"])
def test_pca_students_are_valid_models(kind, tokenizer, sentences, tmp_path):
    teacher = build(kind).eval()
    tok = ShiftedTokenizer(tokenizer, teacher.config.vocab_size)
    layers = (
        {"encoder_layers": 2, "decoder_layers": 2} if teacher.config.is_encoder_decoder else {"num_layers": 2}
    )
    student = make_student(teacher, hidden_size=16, **layers, init="pca", init_texts=sentences, tokenizer=tok)
    info = student.config.ckadistill
    assert info["init"] == "pca" and info["pca"]["texts"] == len(sentences)
    assert 0.5 < info["pca"]["explained_variance"] <= 1.0
    family = get_family(teacher.config)
    for name, tensor in student.state_dict().items():
        if any(r == "D" for r in family.roles(name)):
            assert torch.isfinite(tensor).all(), name
    student.save_pretrained(tmp_path)
    auto = tf.AutoModelForSequenceClassification if "cls" in kind else tf.AutoModelForSeq2SeqLM
    loaded, loading = auto.from_pretrained(tmp_path, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    batch = inputs_for(teacher)
    with torch.no_grad():
        logits = loaded.eval()(**batch).logits
    assert torch.isfinite(logits).all()
    if "cls" not in kind:
        out = loaded.generate(batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=3)
        assert out.shape[0] == 2


def test_cli_pca_reads_init_data(tokenizer, sentences, tmp_path, capsys):
    teacher_dir, out = tmp_path / "teacher", tmp_path / "student"
    tiny_bert(vocab_size=len(tokenizer)).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(sentences) + "\n\n", encoding="utf-8")
    argv = ["--teacher", str(teacher_dir), "--output", str(out), "--hidden-size", "16", "--layers", "2"]
    assert make_student_main([*argv, "--init", "pca", "--init-data", str(data)]) == 0
    assert make_student_main([*argv, "--init", "pca", "--init-data", str(data)]) == 2  # output now taken
    assert "--overwrite-output-dir" in capsys.readouterr().err
    argv.append("--overwrite-output-dir")
    student, loading = tf.AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    assert student.config.ckadistill["pca"]["texts"] == len(sentences)
    # --init-samples caps what is measured (a large file is not read through by the teacher).
    assert make_student_main([*argv, "--init", "pca", "--init-data", str(data), "--init-samples", "3"]) == 0
    assert tf.AutoConfig.from_pretrained(out).ckadistill["pca"]["texts"] == 3
    assert make_student_main([*argv, "--init", "slice", "--init-data", str(data)]) == 2
    assert "--init-data is only read by --init pca" in capsys.readouterr().err

    # A CSV with a text column (as the quickstart's splits) works too; a wrong column is named.
    table = tmp_path / "train.csv"
    table.write_text("id,body\n" + "".join(f"{i},{s}\n" for i, s in enumerate(sentences)), encoding="utf-8")
    pca_csv = [*argv, "--init", "pca", "--init-data", str(table)]
    assert make_student_main([*pca_csv, "--init-text-column", "body"]) == 0
    assert tf.AutoConfig.from_pretrained(out).ckadistill["pca"]["texts"] == len(sentences)
    assert make_student_main(pca_csv) == 2
    assert "--init-text-column 'text' is not in train.csv" in capsys.readouterr().err


def test_masked_lm_head_norm_is_finite(tokenizer, sentences):
    # The MLM head's LayerNorm never runs in the body the basis is measured on: it must not become NaN.
    torch.manual_seed(0)
    config = tf.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    teacher = tf.BertForMaskedLM(config).eval()
    student = make_student(teacher, hidden_size=16, init="pca", init_texts=sentences, tokenizer=tokenizer)
    state = student.state_dict()
    assert all(torch.isfinite(v).all() for v in state.values())
    gain = teacher.state_dict()["cls.predictions.transform.LayerNorm.weight"].mean()
    torch.testing.assert_close(state["cls.predictions.transform.LayerNorm.weight"], gain.expand(16))
