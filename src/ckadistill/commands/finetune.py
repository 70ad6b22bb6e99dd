"""`ckadistill finetune [CONFIG.yaml] [--flag value ...]`: fine-tune a teacher.

`--task classification` (the default) fine-tunes a sequence classifier; `--task summarization` or
`translation` an encoder-decoder, scored on generated text. The YAML file supplies values, flags
override them; see `configs/finetune_teacher.yaml` and `ckadistill finetune --help` for every flag.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def parse(argv: list[str]) -> tuple:
    """`(model, data, training, generation)` arguments from `[CONFIG.yaml] [--flag value ...]`.

    Raises:
        ValueError: a bad value, a missing or unreadable preset, an unknown preset key.
    """
    from ckadistill.config import (
        DataArguments,
        FinetuneModelArguments,
        GenerationArguments,
        TaskTrainingArguments,
        parse_config,
    )

    return parse_config(
        (FinetuneModelArguments, DataArguments, TaskTrainingArguments, GenerationArguments),
        argv,
        prog="ckadistill finetune",
        description="Fine-tune a base model or checkpoint into a teacher: a sequence classifier "
        "(--task classification), or an encoder-decoder (--task summarization or translation).",
    )


def main(argv: list[str]) -> int:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        model_args, data_args, training_args, generation_args = parse(argv)
        from ckadistill.runs import check_model_folder

        check_model_folder(model_args.model_name_or_path, "--model_name_or_path")
        if data_args.is_seq2seq:
            from ckadistill.tasks.seq2seq import run_finetune

            metrics = run_finetune(model_args, data_args, training_args, generation_args)
        else:
            from ckadistill.tasks.classification import run_finetune

            metrics = run_finetune(model_args, data_args, training_args)
    except ValueError as err:
        logger.debug("finetune failed", exc_info=True)
        print(f"ckadistill finetune: error: {err}", file=sys.stderr)
        return 2
    print(f"Model saved to {training_args.output_dir}")
    for key in sorted(metrics):
        if key.startswith(("eval_", "test_")) and not key.endswith(("runtime", "_per_second")):
            print(f"  {key}: {metrics[key]:.4f}")
    return 0
