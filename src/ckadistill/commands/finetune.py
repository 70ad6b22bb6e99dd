"""`ckadistill finetune [CONFIG.yaml] [--flag value ...]`: fine-tune a teacher for classification.

The YAML file supplies values, flags override them; see `configs/finetune_teacher.yaml` and
`ckadistill finetune --help` for every flag.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    from ckadistill.classification import run_finetune
    from ckadistill.config import (
        ClassificationTrainingArguments,
        DataArguments,
        FinetuneModelArguments,
        parse_config,
    )

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        model_args, data_args, training_args = parse_config(
            (FinetuneModelArguments, DataArguments, ClassificationTrainingArguments),
            argv,
            prog="ckadistill finetune",
            description="Fine-tune a base model or checkpoint into a sequence-classification teacher.",
        )
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
