"""Teacher x student layer CKA: the matrix, its heatmap and CSV, and the `cka-map` command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import BartConfig, BartModel, BertConfig, BertModel

from ckadistill.analysis import layer_cka_matrix, load_cka_csv, make_batches, save_cka_csv, save_cka_heatmap
from ckadistill.commands import cka_map as cka_map_cmd
from ckadistill.data import read_texts
from ckadistill.losses import linear_cka
from conftest import SENTENCES, build_tokenizer


def tiny_bert(layers: int, width: int, vocab_size: int) -> BertModel:
    torch.manual_seed(layers * 100 + width)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=64,
        pad_token_id=0,
        initializer_range=0.3,  # large enough that random layers change the representation
    )
    return BertModel(config).eval()


def tiny_bart(encoder_layers: int, decoder_layers: int, width: int, vocab_size: int) -> BartModel:
    torch.manual_seed(encoder_layers * 100 + decoder_layers * 10 + width)
    config = BartConfig(
        vocab_size=vocab_size,
        d_model=width,
        encoder_layers=encoder_layers,
        decoder_layers=decoder_layers,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=2 * width,
        decoder_ffn_dim=2 * width,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=5,
        eos_token_id=6,
        decoder_start_token_id=6,
        init_std=0.3,
    )
    return BartModel(config).eval()


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def bert_pair(tok):
    return tiny_bert(4, 32, len(tok)), tiny_bert(2, 16, len(tok))


@pytest.fixture(scope="module")
def bart_pair(tok):
    return tiny_bart(4, 2, 32, len(tok)), tiny_bart(2, 1, 16, len(tok))


def batches_for(tok, batch_size: int, encoder_decoder: bool = False, targets: list[str] | None = None):
    return make_batches(
        tok, list(SENTENCES), targets, encoder_decoder=encoder_decoder, batch_size=batch_size, max_length=32
    )


# --- the matrix -------------------------------------------------------------------------------


def test_matrix_shape_and_range(tok, bert_pair):
    teacher, student = bert_pair
    matrix = layer_cka_matrix(teacher, student, batches_for(tok, 4))
    assert matrix.shape == (5, 3)
    assert np.all(matrix >= 0.0) and np.all(matrix <= 1.0)
    assert np.all(np.isfinite(matrix))


def test_model_against_itself_has_unit_diagonal(tok, bert_pair):
    teacher, _ = bert_pair
    matrix = layer_cka_matrix(teacher, teacher, batches_for(tok, 4))
    assert matrix.shape == (5, 5)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-5)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-5)
    assert matrix[0, 4] < 0.999  # different layers really differ


def test_tokens_are_pooled_over_batches(tok, bert_pair):
    """Small batches give the CKA of all tokens at once, not a mean of per-batch CKAs."""
    teacher, student = bert_pair
    pooled = layer_cka_matrix(teacher, student, batches_for(tok, 3))
    one_batch = layer_cka_matrix(teacher, student, batches_for(tok, len(SENTENCES)))
    np.testing.assert_allclose(pooled, one_batch, atol=1e-4)

    # Independent reference: the real tokens of every sentence, run one sentence at a time.
    teacher_rows, student_rows = [], []
    for sentence in SENTENCES:
        enc = tok(sentence, return_tensors="pt", return_token_type_ids=False)
        with torch.no_grad():
            teacher_rows.append(teacher(**enc, output_hidden_states=True).hidden_states[2][0])
            student_rows.append(student(**enc, output_hidden_states=True).hidden_states[1][0])
    reference = linear_cka(torch.cat(student_rows), torch.cat(teacher_rows)).item()
    assert pooled[2, 1] == pytest.approx(reference, abs=1e-4)

    per_batch = [layer_cka_matrix(teacher, student, [b])[2, 1] for b in batches_for(tok, 3)]
    assert abs(float(np.mean(per_batch)) - pooled[2, 1]) > 1e-4  # the mean is a different number


def test_padding_is_masked_out(tok, bert_pair):
    """Padding rows added to a batch must not change the matrix."""
    teacher, student = bert_pair
    batch = batches_for(tok, len(SENTENCES))[0]
    padded = {k: torch.nn.functional.pad(v, (0, 5)) for k, v in batch.items()}  # zeros: [PAD], mask 0
    np.testing.assert_allclose(
        layer_cka_matrix(teacher, student, [padded]), layer_cka_matrix(teacher, student, [batch]), atol=1e-4
    )


def test_encoder_decoder_parts(tok, bart_pair):
    teacher, student = bart_pair
    batches = batches_for(tok, 4, encoder_decoder=True)
    encoder = layer_cka_matrix(teacher, student, batches, part="encoder")
    decoder = layer_cka_matrix(teacher, student, batches, part="decoder")
    assert encoder.shape == (5, 3)
    assert decoder.shape == (3, 2)
    assert np.all((decoder >= 0) & (decoder <= 1))
    self_decoder = layer_cka_matrix(teacher, teacher, batches, part="decoder")
    np.testing.assert_allclose(np.diag(self_decoder), 1.0, atol=1e-5)


def test_matrix_errors(tok, bert_pair, bart_pair):
    bert_teacher, bert_student = bert_pair
    with pytest.raises(ValueError, match="part must be one of"):
        layer_cka_matrix(bert_teacher, bert_student, batches_for(tok, 4), part="both")
    with pytest.raises(ValueError, match="needs encoder-decoder models"):
        layer_cka_matrix(bert_teacher, bert_student, batches_for(tok, 4), part="decoder")
    with pytest.raises(ValueError, match="both be encoder-only or both encoder-decoder"):
        layer_cka_matrix(bart_pair[0], bert_student, batches_for(tok, 4))
    with pytest.raises(ValueError, match="at least 2 real tokens"):
        layer_cka_matrix(bert_teacher, bert_student, [])


def test_models_keep_their_training_mode(tok, bert_pair):
    teacher, student = bert_pair
    student.train()
    try:
        layer_cka_matrix(teacher, student, batches_for(tok, 5))
        assert student.training and not teacher.training
    finally:
        student.eval()


# --- files ------------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path):
    matrix = np.random.default_rng(0).uniform(size=(5, 3))
    save_cka_csv(matrix, tmp_path / "m.csv")
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "teacher\\student,0,1,2"
    assert lines[3].startswith("2,")
    np.testing.assert_allclose(load_cka_csv(tmp_path / "m.csv"), matrix, atol=1e-8)


def test_heatmap_png(tmp_path):
    matrix = np.random.default_rng(1).uniform(size=(7, 4))
    path = tmp_path / "sub" / "heat.png"
    save_cka_heatmap(matrix, path, title="encoder", pairs=[(0, 0), (1, 2), (3, 6)])
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000


# --- the command ------------------------------------------------------------------------------


def test_read_texts_formats_and_errors(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\nthree\n")
    assert read_texts(tmp_path / "a.txt", max_samples=2) == (["one", "two"], None)
    rows = [{"src": "a b", "tgt": "b a"}, {"src": "c", "tgt": "d"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert read_texts(tmp_path / "a.jsonl", "src", "tgt") == (["a b", "c"], ["b a", "d"])
    (tmp_path / "a.csv").write_text("src,tgt\na b,b a\n")
    assert read_texts(tmp_path / "a.csv", "src") == (["a b"], None)
    with pytest.raises(
        ValueError, match=r"--text-column 'text' is not in a.csv; its fields are \['src', 'tgt'\]"
    ):
        read_texts(tmp_path / "a.csv")
    with pytest.raises(ValueError, match=r"--target-column needs a \.csv or \.jsonl"):
        read_texts(tmp_path / "a.txt", target_column="tgt")
    with pytest.raises(ValueError, match="--data must end in one of"):
        read_texts(tmp_path / "a.parquet")


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory, tok, bert_pair, bart_pair):
    root = tmp_path_factory.mktemp("models")
    paths = {}
    for name, model in {
        "bert_teacher": bert_pair[0],
        "bert_student": bert_pair[1],
        "bart_teacher": bart_pair[0],
        "bart_student": bart_pair[1],
    }.items():
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        paths[name] = str(root / name)
    (root / "texts.txt").write_text("\n".join(SENTENCES) + "\n")
    rows = [{"text": s, "summary": " ".join(s.split()[:4])} for s in SENTENCES]
    (root / "pairs.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    paths["txt"] = str(root / "texts.txt")
    paths["jsonl"] = str(root / "pairs.jsonl")
    return paths


def test_cli_bert(saved_models, tmp_path, capsys):
    out_dir = tmp_path / "cka"
    argv = ["--teacher", saved_models["bert_teacher"], "--student", saved_models["bert_student"]]
    argv += [
        "--data",
        saved_models["txt"],
        "--output",
        str(out_dir),
        "--batch-size",
        "4",
        "--max-samples",
        "8",
    ]
    assert cka_map_cmd.main(argv) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out_dir.iterdir()) == ["encoder.csv", "encoder.png"]
    matrix = load_cka_csv(out_dir / "encoder.csv")
    assert matrix.shape == (5, 3)
    assert "encoder: 5 teacher x 3 student hidden states" in printed
    assert f"0:0={matrix[0, 0]:.3f}, 1:2={matrix[2, 1]:.3f}, 2:4={matrix[4, 2]:.3f}" in printed


def test_cli_bart_with_targets(saved_models, tmp_path, capsys):
    out_dir = tmp_path / "cka"
    argv = ["--teacher", saved_models["bart_teacher"], "--student", saved_models["bart_student"]]
    argv += ["--data", saved_models["jsonl"], "--output", str(out_dir), "--target-column", "summary"]
    argv += ["--decoder-map", "last"]
    assert cka_map_cmd.main(argv) == 0
    printed = capsys.readouterr().out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == ["decoder.csv", "decoder.png", "encoder.csv", "encoder.png"]
    assert load_cka_csv(out_dir / "encoder.csv").shape == (5, 3)
    decoder = load_cka_csv(out_dir / "decoder.csv")
    assert decoder.shape == (3, 2)
    assert f"mapped pairs (student:teacher=CKA): 1:2={decoder[2, 1]:.3f}; mean" in printed


def test_cli_rejects_bad_input_before_loading(saved_models, tmp_path, capsys):
    argv = ["--teacher", saved_models["bert_teacher"], "--student", saved_models["bert_student"]]
    argv += ["--data", saved_models["txt"], "--output", str(tmp_path / "x")]
    assert cka_map_cmd.main([*argv, "--encoder-map", "0:0,0:1"]) == 2
    assert "maps student layer 0 twice" in capsys.readouterr().err
    assert cka_map_cmd.main([*argv, "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_trimmed_student_reads_its_own_tokenizer(saved_models, tmp_path, capsys):
    from transformers import AutoTokenizer, BertModel

    from ckadistill.vocab import trim_vocabulary

    teacher_dir = saved_models["bert_teacher"]
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    kept_text = SENTENCES[:4]
    trimmed, trimmed_tok, _ = trim_vocabulary(BertModel.from_pretrained(teacher_dir), tokenizer, kept_text)
    assert trimmed.config.vocab_size < len(tokenizer)  # the student's ids differ from the teacher's
    trimmed.save_pretrained(tmp_path / "trimmed")
    trimmed_tok.save_pretrained(tmp_path / "trimmed")
    (tmp_path / "kept.txt").write_text("\n".join(kept_text) + "\n")
    argv = [
        "--teacher",
        teacher_dir,
        "--student",
        str(tmp_path / "trimmed"),
        "--data",
        str(tmp_path / "kept.txt"),
    ]
    argv += ["--output", str(tmp_path / "cka"), "--encoder-map", "0:0,1:1,2:2,3:3,4:4"]
    assert cka_map_cmd.main(argv) == 0
    matrix = load_cka_csv(tmp_path / "cka" / "encoder.csv")
    # A trimmed copy of the teacher on text made of kept tokens is the teacher: CKA 1 on the diagonal.
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-4)

    # A student whose tokenizer is not a trimmed copy of the teacher's (here: the teacher's own, too big
    # for the student's rows) is refused before any weights load.
    foreign = tmp_path / "foreign"
    trimmed.save_pretrained(foreign)
    AutoTokenizer.from_pretrained(saved_models["bart_teacher"]).save_pretrained(foreign)
    argv[3] = str(foreign)
    argv[7] = str(tmp_path / "cka2")
    assert cka_map_cmd.main(argv) == 2
    assert "is not a trimmed copy of the teacher's" in capsys.readouterr().err
    assert not (tmp_path / "cka2").exists()
