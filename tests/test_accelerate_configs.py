"""The `accelerate launch` configs in configs/accelerate/: each loads with accelerate's own loader and sets
what its name says, every YAML key carries a comment, the DeepSpeed JSONs leave to the Trainer what its
flags decide, and the launch lines in the headers and the README name real files and parse.

(These files are not `ckadistill distill` presets, so tests/test_config.py's preset checks, which read
configs/*.yaml only, do not apply to them.)"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from ckadistill.commands.distill import parse
from test_readme_commands import code_block_lines

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "configs" / "accelerate"
ZERO = {"deepspeed_zero2.yaml": 2, "deepspeed_zero3.yaml": 3}
YAMLS = [*ZERO, "fsdp.yaml"]
# What the HF Trainer fills in from its own flags (--per_device_train_batch_size, --bf16, ...).
AUTO = [
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "bf16.enabled",
    "fp16.enabled",
    "zero_optimization.reduce_bucket_size",
]


def lookup(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def test_the_folder_holds_exactly_these_configs():
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == sorted(YAMLS)
    assert sorted(p.name for p in FOLDER.glob("*.json")) == ["ds_zero2.json", "ds_zero3.json"]


@pytest.mark.parametrize("name", YAMLS)
def test_every_key_has_a_comment(name):
    for line in (FOLDER / name).read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert re.search(r"\S\s+# \S", line), f"{name}: key without a comment: {line!r}"


@pytest.mark.parametrize(("name", "stage"), ZERO.items())
def test_deepspeed_config_loads_with_the_stage_of_its_name(name, stage, monkeypatch):
    monkeypatch.chdir(ROOT)  # the JSON path is relative to the folder `accelerate launch` runs in
    config = load_config_from_file(str(FOLDER / name))
    assert config.distributed_type == DistributedType.DEEPSPEED
    assert config.mixed_precision is None  # precision comes from the JSON's "auto", i.e. --bf16 / --fp16
    json_path = Path(config.deepspeed_config["deepspeed_config_file"])
    assert json_path.is_file() and json_path.name == f"ds_zero{stage}.json"
    engine = json.loads(json_path.read_text(encoding="utf-8"))
    assert engine["zero_optimization"]["stage"] == stage
    for key in AUTO:
        assert lookup(engine, key) == "auto", key
    assert "optimizer" not in engine and "scheduler" not in engine  # the Trainer's AdamW and schedule
    if stage == 3:  # the saved student is gathered whole, not left as shards
        assert engine["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_fsdp_config_loads_as_fsdp2_that_reads_weights_on_every_process(monkeypatch):
    monkeypatch.chdir(ROOT)
    config = load_config_from_file(str(FOLDER / "fsdp.yaml"))
    assert config.distributed_type == DistributedType.FSDP
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_reshard_after_forward"] is True  # full sharding
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # the saved student is whole
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False


def test_fsdp_plugin_accepts_the_settings():
    """accelerate's FSDP plugin validates the keys the launcher turns into its environment."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    fsdp = load_config_from_file(str(FOLDER / "fsdp.yaml")).fsdp_config
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"],
        reshard_after_forward=fsdp["fsdp_reshard_after_forward"],
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        state_dict_type=fsdp["fsdp_state_dict_type"],
        cpu_ram_efficient_loading=fsdp["fsdp_cpu_ram_efficient_loading"],
        activation_checkpointing=fsdp["fsdp_activation_checkpointing"],
    )
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True


def test_deepspeed_jsons_fill_from_the_trainer_flags(tmp_path, monkeypatch):
    """The "auto" values resolve against TrainingArguments as the Trainer resolves them (needs deepspeed)."""
    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    from ckadistill.config import ClassificationTrainingArguments

    args = ClassificationTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, gradient_accumulation_steps=2, use_cpu=True
    )
    for name, stage in ZERO.items():
        path = FOLDER / f"ds_zero{stage}.json"
        filled = HfTrainerDeepSpeedConfig(str(path))
        try:
            filled.trainer_config_process(args)
            assert filled.is_zero3() == (stage == 3), name
            assert filled.get_value("train_micro_batch_size_per_gpu") == 4
            assert filled.get_value("gradient_accumulation_steps") == 2
            assert filled.get_value("train_batch_size") == 8  # one process here
            assert filled.get_value("gradient_clipping") == args.max_grad_norm
            assert filled.dtype() == torch.float32
        finally:
            unset_hf_deepspeed_config()


def launch_lines(text: str) -> list[str]:
    """`accelerate launch --config_file ... -m ckadistill.cli ...` lines, continuations joined."""
    return [line.strip() for line in code_block_lines(text) if line.strip().startswith("accelerate launch")]


def header_lines(name: str) -> list[str]:
    comments = [
        line[1:] for line in (FOLDER / name).read_text(encoding="utf-8").splitlines() if line[:1] == "#"
    ]
    return launch_lines("```\n" + "\n".join(comments) + "\n```")


def check_launch(line: str) -> None:
    """The config file exists and the ckadistill part parses with `distill`'s own parser."""
    words = [w for w in shlex.split(line, comments=True) if w != "..."]
    config = words[words.index("--config_file") + 1]
    assert (ROOT / config).is_file(), f"{config} does not exist (in: {line})"
    assert words[words.index("-m") + 1 : words.index("-m") + 3] == ["ckadistill.cli", "distill"], line
    argv = words[words.index("-m") + 3 :]
    if "--bf16" in argv and not torch.cuda.is_available():
        argv += [
            "--bf16",
            "false",
        ]  # transformers refuses bf16 without a GPU; the hardware is not checked here
    try:
        parse(argv)
    except SystemExit as exit_:
        pytest.fail(f"`{line}` does not parse (argparse exit {exit_.code})")


@pytest.mark.parametrize("name", YAMLS)
def test_each_header_says_how_to_launch_it(name, monkeypatch):
    monkeypatch.chdir(ROOT)
    lines = header_lines(name)
    assert lines and all(f"--config_file configs/accelerate/{name}" in line for line in lines)
    for line in lines:
        check_launch(line)


def test_readme_launch_lines_name_every_config_and_parse(monkeypatch):
    monkeypatch.chdir(ROOT)
    lines = [line for line in launch_lines((ROOT / "README.md").read_text()) if "--config_file" in line]
    assert {name for name in YAMLS if any(f"configs/accelerate/{name}" in line for line in lines)} == set(
        YAMLS
    )
    for line in lines:
        check_launch(line)
