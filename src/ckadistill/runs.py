"""Steps that every task's `run_*` entry point shares (classification, summarization, translation).

Only what is the same whatever the task: where the resolved config and the layer map are written,
the checks before training, how `--resume_from_checkpoint` is read, and the training summary of a
model card. Task-specific data, metrics and entry points live in `ckadistill.tasks`.
"""

from __future__ import annotations

from typing import Any

from transformers import SchedulerType, TrainingArguments

CONFIG_FILE = "ckadistill_config.yaml"  # the resolved configuration, beside every saved model
LAYER_MAP_FILE = "layer_map.json"


def check_eval_setup(encoded, training_args: TrainingArguments) -> None:
    """Evaluation during training needs a validation split; say which flag provides one."""
    if "validation" not in encoded and training_args.eval_strategy != "no":
        raise ValueError(
            f"--eval_strategy {training_args.eval_strategy} needs a validation split: pass --validation_file, "
            "keep --validation_split_fraction above 0, or set --eval_strategy no"
        )


def resume_target(value: str | None) -> str | bool | None:
    """`--resume_from_checkpoint true` (or `last`) means the latest checkpoint in --output_dir."""
    if value is not None and str(value).lower() in ("true", "last"):
        return True
    return value


def training_summary(training_args: TrainingArguments, trainer) -> dict[str, Any]:
    """The training rows of a model card."""
    return {
        "optimiser steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "learning rate": training_args.learning_rate,
        "schedule": SchedulerType(training_args.lr_scheduler_type).value,
        "batch size per device": training_args.per_device_train_batch_size,
        "gradient accumulation": training_args.gradient_accumulation_steps,
        "seed": training_args.seed,
    }
