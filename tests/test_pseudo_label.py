"""`ckadistill pseudo-label` through its real entry point, on a tiny random BART saved with a tokenizer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from transformers import BartConfig, BartForConditionalGeneration, BertConfig

import ckadistill.tasks.pseudo_label as pseudo_module
from ckadistill.cli import main as cli_main
from ckadistill.commands.pseudo_label import main
from ckadistill.config import GenerationArguments
from ckadistill.data import load_file
from ckadistill.tasks.pseudo_label import recover_partial
from ckadistill.tasks.seq2seq_metrics import generate
from conftest import SENTENCES, build_tokenizer

ROWS = 7
# Sources are truncated to 6 tokens, shorter than every fixture sentence: no batch needs padding, so an
# output cannot depend on which rows share its batch (and a resumed run batches differently).
GENERATION = ["--max_new_tokens", "4", "--max_source_length", "6", "--generation_batch_size", "3"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tokenizer),
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=64,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("teacher")
    BartForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def data_file(tmp_path) -> Path:
    path = tmp_path / "train.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "source", "target"])
        for i, sentence in enumerate(SENTENCES[:ROWS]):
            writer.writerow([i, sentence, " ".join(sentence.split()[:3])])
    return path


def run(teacher_dir, data_file, output, *extra) -> int:
    cache = str(Path(output).parent / "cache")
    argv = ["--teacher", str(teacher_dir), "--data", str(data_file), "--output", str(output)]
    return main([*argv, *GENERATION, "--data_cache_dir", cache, *extra])


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def generated_sources(monkeypatch) -> list[str]:
    """Every source the command passes to `generate`, in order."""
    seen: list[str] = []

    def counting_generate(model, tokenizer, sources, *args, **kwargs):
        seen.extend(sources)
        return generate(model, tokenizer, sources, *args, **kwargs)

    monkeypatch.setattr(pseudo_module, "generate", counting_generate)
    return seen


def expected_outputs(teacher_dir) -> list[str]:
    """What `generate` gives for each source on its own."""
    model = BartForConditionalGeneration.from_pretrained(teacher_dir)
    tokenizer = build_tokenizer()
    single = GenerationArguments(max_new_tokens=4, generation_batch_size=1)
    return [generate(model, tokenizer, [s], single, max_source_length=6)[0] for s in SENTENCES[:ROWS]]


def test_one_line_per_row_with_the_teachers_output(teacher_dir, data_file, tmp_path, one_thread):
    output = tmp_path / "pseudo.jsonl"
    assert run(teacher_dir, data_file, output) == 0
    lines = read_lines(output)
    assert len(lines) == ROWS and not (tmp_path / "pseudo.jsonl.partial").exists()
    assert [line["id"] for line in lines] == list(range(ROWS))
    assert [line["source"] for line in lines] == SENTENCES[:ROWS]
    assert all(set(line) == {"id", "source", "target", "pseudo_target"} for line in lines)
    assert [line["pseudo_target"] for line in lines] == expected_outputs(teacher_dir)
    # distill reads the file like any training file.
    assert load_file(output, flag="train_file", cache_dir=str(tmp_path / "cache")).num_rows == ROWS


def test_mix_writes_gold_then_pseudo(teacher_dir, data_file, tmp_path, one_thread):
    output = tmp_path / "mixed.jsonl"
    assert run(teacher_dir, data_file, output, "--mix", "true", "--max_samples", "4") == 0
    lines = read_lines(output)
    pseudo = expected_outputs(teacher_dir)[:4]
    assert len(lines) == 8
    for i in range(4):
        gold, teacher = lines[2 * i], lines[2 * i + 1]
        assert gold["source"] == teacher["source"] == SENTENCES[i]
        assert gold["target"] == " ".join(SENTENCES[i].split()[:3])
        assert teacher["target"] == gold["pseudo_target"] == teacher["pseudo_target"] == pseudo[i]


def test_pseudo_column_may_replace_the_target(teacher_dir, data_file, tmp_path, one_thread):
    output = tmp_path / "replaced.jsonl"
    assert run(teacher_dir, data_file, output, "--pseudo_column", "target", "--max_samples", "3") == 0
    lines = read_lines(output)
    assert all(set(line) == {"id", "source", "target"} for line in lines)
    assert [line["target"] for line in lines] == expected_outputs(teacher_dir)[:3]


@pytest.mark.parametrize(("mix", "complete_lines", "rows_done"), [(False, 4, 4), (True, 3, 1)])
def test_resume_after_a_kill(
    teacher_dir, data_file, tmp_path, generated_sources, one_thread, mix, complete_lines, rows_done
):
    extra = ["--mix", str(mix).lower()]
    reference = tmp_path / "reference.jsonl"
    assert run(teacher_dir, data_file, reference, *extra) == 0
    generated_sources.clear()

    # A kill mid-write: some complete lines (with --mix, a row may have only its gold line), then a torn one.
    output = tmp_path / "out.jsonl"
    kept = reference.read_text(encoding="utf-8").splitlines(keepends=True)[:complete_lines]
    Path(f"{output}.partial").write_text("".join(kept) + '{"id": 9, "source": "the te', encoding="utf-8")

    assert run(teacher_dir, data_file, output, *extra) == 0
    assert output.read_bytes() == reference.read_bytes()
    assert generated_sources == SENTENCES[rows_done:ROWS]
    assert not Path(f"{output}.partial").exists()


def test_recover_partial_refuses_other_data(tmp_path):
    partial = tmp_path / "out.jsonl.partial"
    partial.write_text(json.dumps({"source": "a", "pseudo_target": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="belongs to other data"):
        recover_partial(partial, ["b", "c"], "source", 1)
    assert recover_partial(partial, ["a", "c"], "source", 1) == 1
    with pytest.raises(ValueError, match="more rows than the 0 of --data"):
        recover_partial(partial, [], "source", 1)
    assert recover_partial(partial, ["a", "c"], "source", 2) == 0  # half a --mix row is not a row
    assert partial.read_text() == ""
    assert recover_partial(tmp_path / "missing.partial", ["a"], "source", 1) == 0


def test_existing_output_needs_overwrite(teacher_dir, data_file, tmp_path, capsys, one_thread):
    output = tmp_path / "pseudo.jsonl"
    output.write_text("old\n")
    assert run(teacher_dir, data_file, output, "--max_samples", "2") == 2
    assert "--overwrite true" in capsys.readouterr().err and output.read_text() == "old\n"
    assert run(teacher_dir, data_file, output, "--max_samples", "2", "--overwrite", "true") == 0
    assert len(read_lines(output)) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--source_column", "document"], "--source_column"),
        (["--mix", "true", "--target_column", "summary"], "--target_column"),
        (["--pseudo_column", "id"], "--pseudo_column 'id' is already a column"),
        (["--mix", "true", "--pseudo_column", "target"], "--mix true keeps the gold target"),
        (["--max_samples", "0"], "--max_samples must be >= 1"),
        (["--task", "classification"], "--task must be summarization or translation"),
        (["--num_beams", "0"], "--num_beams must be >= 1"),
        (["--train_file", "train.csv"], "--train_file is not read by pseudo-label"),
    ],
)
def test_errors_name_the_flag(teacher_dir, data_file, tmp_path, capsys, extra, message):
    assert run(teacher_dir, data_file, tmp_path / "out.jsonl", *extra) == 2
    err = capsys.readouterr().err
    assert "ckadistill pseudo-label: error: " in err and message in err.split("error: ", 1)[1]


def test_output_must_be_jsonl_and_teacher_an_encoder_decoder(teacher_dir, data_file, tmp_path, capsys):
    assert run(teacher_dir, data_file, tmp_path / "out.csv") == 2
    assert "--output" in capsys.readouterr().err
    encoder_only = tmp_path / "bert"
    BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2).save_pretrained(
        encoder_only
    )
    assert run(encoder_only, data_file, tmp_path / "out.jsonl") == 2
    assert "not an encoder-decoder" in capsys.readouterr().err


def test_empty_data_and_cli_registration(teacher_dir, tmp_path, capsys):
    empty = tmp_path / "empty.csv"
    empty.write_text("source,target\n")
    assert run(teacher_dir, empty, tmp_path / "out.jsonl") == 2
    assert "--data" in capsys.readouterr().err
    assert cli_main(["pseudo-label", "--teacher", str(teacher_dir), "--output", "x.jsonl"]) == 2
    assert "--data is required" in capsys.readouterr().err
