"""Config parsing: every preset in configs/ parses, flags override YAML, validation names the flag."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ckadistill.config import (
    ClassificationTrainingArguments,
    DataArguments,
    DistillArguments,
    DistillModelArguments,
    FinetuneModelArguments,
    GenerationArguments,
    parse_config,
    save_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
# The dataclasses each command parses, in its order (ckadistill.commands.distill / finetune).
COMMAND_TYPES = {
    "distill": (
        DistillModelArguments,
        DataArguments,
        DistillArguments,
        ClassificationTrainingArguments,
        GenerationArguments,
    ),
    "finetune": (FinetuneModelArguments, DataArguments, ClassificationTrainingArguments, GenerationArguments),
}
DISTILL = COMMAND_TYPES["distill"]


def preset_command(path: Path) -> str:
    """Each preset names its command on a `# Usage: ckadistill COMMAND ...` line."""
    found = re.search(r"^# Usage: ckadistill (\S+) ", path.read_text(), flags=re.MULTILINE)
    assert found, f"{path.name} lacks a '# Usage: ckadistill COMMAND configs/...' line"
    return found.group(1)


def test_there_are_presets():
    assert {"classification_cka.yaml", "classification_baseline_mse.yaml", "finetune_teacher.yaml"} <= {
        p.name for p in PRESETS
    }


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_parses(path, tmp_path):
    command = preset_command(path)
    if command not in COMMAND_TYPES:
        pytest.skip(f"{path.name} is a preset of `ckadistill {command}`, parsed by that command's tests")
    values = yaml.safe_load(path.read_text())
    argv = [str(path), "--output_dir", str(tmp_path)]
    if values.get("bf16"):
        argv += ["--bf16", "false"]  # GPU presets: transformers refuses bf16 where no GPU supports it
    parsed = parse_config(COMMAND_TYPES[command], argv, prog="test")
    merged = {f: getattr(obj, f) for obj in parsed for f in obj.__dataclass_fields__}
    skipped = ("output_dir", "report_to", "eval_strategy", "save_strategy", "lr_scheduler_type", "bf16")
    for key, value in values.items():
        if key not in skipped:
            assert merged[key] == value, key
    training = next(obj for obj in parsed if isinstance(obj, ClassificationTrainingArguments))
    assert training.output_dir == str(tmp_path)


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_key_has_a_comment(path):
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            assert " # " in line, f"{path.name}: key without a comment: {line!r}"


def write_yaml(tmp_path: Path, values: dict) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


BASE = {"teacher": "t", "student_layers": 2, "train_file": "train.csv", "output_dir": "out"}


def test_flags_override_yaml(tmp_path):
    config = write_yaml(tmp_path, {**BASE, "alpha_kd": 0.5, "hidden_loss": "cosine", "max_steps": 7})
    model, data, distill, training, _generation = parse_config(
        DISTILL, [config, "--alpha_kd", "0.25", "--cka_sqrt", "--max_steps", "9"], prog="test"
    )
    assert distill.alpha_kd == 0.25 and distill.hidden_loss == "cosine" and distill.cka_sqrt is True
    assert training.max_steps == 9 and training.output_dir == "out"
    assert model.teacher == "t" and model.student_layers == 2 and data.train_file == "train.csv"


def test_flags_alone_and_quick_run_defaults():
    model, _, distill, training, _ = parse_config(DISTILL, ["--teacher", "t", "--student", "s"], prog="test")
    assert model.student == "s" and distill.hidden_loss == "cka" and distill.hidden_reduction == "sum"
    assert training.report_to in ("none", []) and training.learning_rate == 1e-4


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"alpha_hidden": -1.0}, "--alpha_hidden must be >= 0"),
        ({"temperature": 0.0}, "--temperature must be > 0"),
        ({"layer_map": "none"}, "--layer_map none matches no layers"),
        ({"alpha_task": 0.0, "alpha_kd": 0.0, "alpha_hidden": 0.0}, "every loss term is off"),
        ({"labelled_fraction": 0.0}, "--labelled_fraction must be in"),
        ({"validation_split_fraction": 0.6, "test_split_fraction": 0.5}, "must leave some training rows"),
        ({"student": "s"}, "cannot apply"),
        ({"student_layers": None}, "no student given"),
        ({"teacher": None}, "--teacher is required"),
    ],
)
def test_validation_names_the_flag(tmp_path, override, message):
    config = write_yaml(tmp_path, {**BASE, **override})
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(DISTILL, [config], prog="test")


def test_bad_choice_is_rejected(tmp_path):
    with pytest.raises(SystemExit):  # argparse lists the choices
        parse_config(DISTILL, [write_yaml(tmp_path, BASE), "--hidden_loss", "l2"], prog="test")


def test_unknown_yaml_key_suggests_the_right_one(tmp_path):
    with pytest.raises(ValueError, match=r"'alpha_hiden' \(did you mean 'alpha_hidden'\?\)"):
        parse_config(DISTILL, [write_yaml(tmp_path, {**BASE, "alpha_hiden": 1.0})], prog="test")


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        parse_config(DISTILL, [str(tmp_path / "nope.yaml")], prog="test")


def test_saved_config_round_trips(tmp_path):
    config = write_yaml(
        tmp_path, {**BASE, "alpha_kd": 0.3, "layer_map": "0:0,1:2", "report_to": "tensorboard"}
    )
    parsed = parse_config(DISTILL, [config, "--learning_rate", "3e-5"], prog="test")
    saved = save_config(tmp_path / "resolved.yaml", *parsed, header="ckadistill distill")
    assert saved.read_text().startswith("# ckadistill distill\n")
    again = parse_config(DISTILL, [str(saved)], prog="test")
    assert again[:3] == parsed[:3] and again[4] == parsed[4]
    assert again[3].learning_rate == 3e-5 and again[3].report_to == parsed[3].report_to
    assert "hub_token" not in yaml.safe_load(saved.read_text())


def test_pinned_memory_is_off_without_an_accelerator(tmp_path):
    args = ClassificationTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert args.dataloader_pin_memory is False
