"""Steps that every task's `run_*` entry point shares (classification, summarization, translation).

Only what is the same whatever the task: where the resolved config and the layer map are written,
the checks before training, how `--resume_from_checkpoint` is read, and the training summary of a
model card. Task-specific data, metrics and entry points live in `ckadistill.tasks`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
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


def save_run_files(
    trainer,
    output_dir: str | Path,
    metrics: dict[str, float],
    configs: Sequence[Any],
    *,
    header: str,
    layer_map: tuple[str, Sequence[tuple[int, int]]] | None = None,
    decoder_layer_map: tuple[str, Sequence[tuple[int, int]]] | None = None,
) -> None:
    """What every run writes beside its saved model (call on the main process): `all_results.json`,
    `trainer_state.json` (the full log history, loss components included), the resolved config, and for
    students `layer_map.json` (`(spec, pairs)` of the encoder, and of the decoder when it has one)."""
    from ckadistill.config import save_config
    from ckadistill.layer_maps import format_layer_map

    output_dir = Path(output_dir)
    trainer.save_metrics("all", metrics)
    trainer.save_state()
    save_config(output_dir / CONFIG_FILE, *configs, header=header)
    if layer_map is None:
        return
    spec, pairs = layer_map
    record: dict[str, Any] = {
        "spec": spec,
        "encoder": format_layer_map(list(pairs)),
        "pairs": [list(p) for p in pairs],
    }
    if decoder_layer_map is not None:
        spec, pairs = decoder_layer_map
        record.update(
            decoder_spec=spec, decoder=format_layer_map(list(pairs)), decoder_pairs=[list(p) for p in pairs]
        )
    (output_dir / LAYER_MAP_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
