"""Steps that every task's `run_*` entry point shares (classification, summarization, translation).

Only what is the same whatever the task: where the resolved config and the layer map are written,
the checks before training, how `--resume_from_checkpoint` is read, and the training summary of a
model card. Task-specific data, metrics and entry points live in `ckadistill.tasks`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import SchedulerType, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

CONFIG_FILE = "ckadistill_config.yaml"  # the resolved configuration, beside every saved model
LAYER_MAP_FILE = "layer_map.json"


def check_eval_setup(encoded, training_args: TrainingArguments) -> None:
    """Evaluation during training needs a validation split; say which flag provides one."""
    if "validation" not in encoded and training_args.eval_strategy != "no":
        raise ValueError(
            f"--eval_strategy {training_args.eval_strategy} needs a validation split: pass --validation_file, "
            "keep --validation_split_fraction above 0, or set --eval_strategy no"
        )


WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def check_folder_is_free(
    folder: str | Path, flag: str, *, overwrite: bool, overwrite_flag: str = "--overwrite_output_dir true"
) -> None:
    """Refuse, before any work, to write into a folder that already holds files unless `overwrite`
    (nothing is ever deleted here; files of the same name are replaced)."""
    out = Path(folder)
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return
    names = sorted(p.name for p in out.iterdir())
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise ValueError(
        f"{flag} {out} already holds files ({shown}): pass {overwrite_flag} to write into it (files of the "
        "same name are replaced), or choose another folder"
    )


def check_output_dir(training_args: TrainingArguments) -> None:
    """`check_folder_is_free` for a training run's --output_dir; resuming from it is writing into it."""
    if training_args.resume_from_checkpoint:
        return
    try:
        check_folder_is_free(
            training_args.output_dir,
            "--output_dir",
            overwrite=getattr(training_args, "overwrite_output_dir", False),
        )
    except ValueError as err:
        raise ValueError(f"{err}; or --resume_from_checkpoint true to continue the run it holds") from None


def check_model_folder(path: str | Path, flag: str) -> None:
    """A local model folder must hold weights; hub ids (no such folder here) are left to the loader."""
    folder = Path(path)
    if not folder.is_dir():
        if folder.suffix or folder.is_absolute() or str(path).startswith("."):
            raise ValueError(f"{flag} {path}: no such folder")
        return  # a hub id such as 'bert-base-uncased'
    if not any(next(folder.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise ValueError(
            f"{flag} {path} holds no weights (model.safetensors or pytorch_model.bin): point it at a folder "
            "written by save_pretrained"
        )


def checkpoint_is_complete(folder: str | Path) -> bool:
    """Whether a Trainer checkpoint was written to the end.

    The Trainer writes the weights, the optimizer and scheduler (and, here, the `mse_proj` projections
    beside them), the RNG states, and last `trainer_state.json`; a process killed while writing leaves
    that file missing or cut short, so a folder whose state file parses was finished.
    """
    state = Path(folder) / "trainer_state.json"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The `checkpoint-N` folder of `output_dir` with the largest N that was written to the end."""
    steps = {}  # checkpoint folder -> its step
    for folder in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        step = folder.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")
        if folder.is_dir() and step.isdigit():
            steps[folder] = int(step)
    for folder in sorted(steps, key=steps.get, reverse=True):
        if checkpoint_is_complete(folder):
            return folder
        logger.warning("Skipping %s: it was not written to the end (the run stopped while saving it)", folder)
    return None


def resume_target(value: str | None, output_dir: str | Path | None = None) -> str | None:
    """`--resume_from_checkpoint true` (or `last`): the latest complete checkpoint in `output_dir`, never a
    half-written one (the Trainer's own lookup takes the highest number, finished or not)."""
    if value is None or str(value).lower() not in ("true", "last"):
        return value
    found = last_complete_checkpoint(output_dir) if output_dir is not None else None
    if found is None:
        raise ValueError(
            f"--resume_from_checkpoint {value}: no complete checkpoint-* folder in {output_dir}: "
            "drop the flag to start afresh, or pass the path of a checkpoint"
        )
    logger.info("Resuming from %s", found)
    return str(found)


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
