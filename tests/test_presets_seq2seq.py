"""The GPU presets of the paper's encoder-decoder setups: they parse, their shapes fit, every key says why.

Parsing reads no hub: `parse_config` only builds the dataclasses. `--bf16 false` is added on the command
line because transformers refuses bf16 at parse time on a machine without a GPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ckadistill.config import (
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    GenerationArguments,
    TaskTrainingArguments,
    load_yaml_config,
    parse_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DISTILL = (DistillModelArguments, DataArguments, DistillArguments, TaskTrainingArguments, GenerationArguments)

# teacher -> (layers per stack, width, head size), from the released configs.
TEACHERS = {
    "facebook/bart-large-xsum": (12, 1024, 64),
    "facebook/bart-large-cnn": (12, 1024, 64),
    "facebook/mbart-large-en-ro": (12, 1024, 64),
    "google-t5/t5-base": (12, 768, 64),  # d_kv 64
}
# preset -> (teacher, encoder and decoder layers, width, task)
PRESETS = {
    "xsum_bart_large_3x3_d640.yaml": ("facebook/bart-large-xsum", 3, 640, "summarization"),
    "xsum_bart_large_6x6_d768.yaml": ("facebook/bart-large-xsum", 6, 768, "summarization"),
    "cnndm_bart_large_6x6_d768.yaml": ("facebook/bart-large-cnn", 6, 768, "summarization"),
    "wmt16_mbart_en_ro_6x6_d512.yaml": ("facebook/mbart-large-en-ro", 6, 512, "translation"),
    "xsum_t5_base_4x4_d512.yaml": ("google-t5/t5-base", 4, 512, "summarization"),
}
# Values the parsers turn into other types (enums, lists) or that the test overrides.
NOT_COMPARED = {"output_dir", "bf16", "lr_scheduler_type", "eval_strategy", "save_strategy", "report_to"}


def parsed(name: str, tmp_path: Path) -> dict:
    argv = [str(CONFIGS / name), "--output_dir", str(tmp_path), "--bf16", "false"]
    configs = parse_config(DISTILL, argv, prog="test")
    assert [type(c) for c in configs] == list(DISTILL)
    return {f: getattr(c, f) for c in configs for f in c.__dataclass_fields__}


@pytest.mark.parametrize("name", PRESETS)
def test_preset_keys_are_distill_flags(name):
    values = load_yaml_config(CONFIGS / name, DISTILL)  # raises on a key no dataclass knows
    assert values == yaml.safe_load((CONFIGS / name).read_text())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_parses_into_the_five_dataclasses(name, tmp_path):
    values = yaml.safe_load((CONFIGS / name).read_text())
    merged = parsed(name, tmp_path)
    for key, value in values.items():
        if key not in NOT_COMPARED:
            assert merged[key] == value, key
    assert str(merged["lr_scheduler_type"].value) == values["lr_scheduler_type"]
    assert values["bf16"] is True and merged["bf16"] is False  # the GPU setting, overridden here
    assert merged["output_dir"] == str(tmp_path)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_shapes_fit_the_teacher(name):
    teacher, layers, width, task = PRESETS[name]
    values = yaml.safe_load((CONFIGS / name).read_text())
    teacher_layers, teacher_width, head_size = TEACHERS[teacher]
    assert values["teacher"] == teacher and values["task"] == task
    assert values["student_encoder_layers"] == values["student_decoder_layers"] == layers
    assert teacher_layers % layers == 0  # the uniform map meets the top teacher layer
    assert values["student_hidden_size"] == width < teacher_width
    assert width % values["student_heads"] == 0 and width // values["student_heads"] == head_size
    assert values["student_ffn_size"] <= 4 * teacher_width


@pytest.mark.parametrize("name", PRESETS)
def test_preset_has_the_papers_loss_and_optimiser(name):
    values = yaml.safe_load((CONFIGS / name).read_text())
    assert (values["alpha_task"], values["alpha_kd"], values["alpha_hidden"]) == (0.2, 0.8, 1.0)
    assert values["hidden_loss"] == "cka" and values["hidden_reduction"] == "sum"
    assert values["layer_map"] == values["decoder_layer_map"] == "uniform"
    assert values["student_init"] == "slice" and values["temperature"] == 1.0
    assert values["learning_rate"] == 1e-4 and values["lr_scheduler_type"] in ("linear", "cosine")
    assert 16 <= values["per_device_train_batch_size"] * values["gradient_accumulation_steps"] <= 32
    assert values["bf16"] is True and values["predict_with_generate"] is True


def test_seq2seq_details(tmp_path):
    t5 = parsed("xsum_t5_base_4x4_d512.yaml", tmp_path)
    assert t5["source_prefix"] == "summarize: "
    wmt = parsed("wmt16_mbart_en_ro_6x6_d512.yaml", tmp_path)
    assert (wmt["source_lang"], wmt["target_lang"]) == ("en_XX", "ro_RO")
    assert (wmt["source_column"], wmt["target_column"]) == ("translation.en", "translation.ro")
    assert (wmt["dataset_name"], wmt["dataset_config_name"]) == ("wmt/wmt16", "ro-en")
    cnn = parsed("cnndm_bart_large_6x6_d768.yaml", tmp_path)
    assert (cnn["dataset_name"], cnn["dataset_config_name"]) == ("abisee/cnn_dailymail", "3.0.0")
    assert (cnn["source_column"], cnn["target_column"]) == ("article", "highlights")
    assert (cnn["num_beams"], cnn["max_new_tokens"], cnn["max_target_length"]) == (4, 142, 142)
    xsum = parsed("xsum_bart_large_3x3_d640.yaml", tmp_path)
    assert (xsum["source_column"], xsum["target_column"]) == ("document", "summary")
    assert (xsum["num_beams"], xsum["max_new_tokens"], xsum["max_source_length"]) == (6, 62, 1024)


@pytest.mark.parametrize("name", PRESETS)
def test_every_key_has_a_comment_and_the_header_says_how(name):
    text = (CONFIGS / name).read_text()
    assert text.startswith(f"# Usage: ckadistill distill configs/{name} ")
    header = text.split("\n\n", 1)[0]
    assert "hub" in header and "GPU" in header
    for line in text.splitlines():
        if line and not line.startswith(("#", " ")):
            assert re.search(r"\S\s+# \S", line), f"{name}: key without a comment: {line!r}"


@pytest.mark.parametrize("name", ["summarization_cka.yaml", *PRESETS])
def test_the_paper_weighting_in_code_matches_the_presets(name, tmp_path):
    # DistillArguments.seq2seq_paper (the headline job, the benchmarks) and the YAML presets agree.
    values = parsed(name, tmp_path)
    recipe = DistillArguments.seq2seq_paper()
    for key in ("alpha_task", "alpha_kd", "alpha_hidden", "hidden_loss", "hidden_reduction"):
        assert getattr(recipe, key) == values[key], key
    assert (recipe.layer_map, recipe.decoder_layer_map) == ("uniform", "uniform")
    assert DistillArguments.seq2seq_paper("none").uses_hidden is False
    assert DistillArguments.seq2seq_paper("mse_proj", temperature=2.0).temperature == 2.0
