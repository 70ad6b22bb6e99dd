"""`ckadistill distill [CONFIG.yaml] [--flag value ...]`: distil a classification teacher into a student.

The YAML file supplies values, flags override them; see `configs/classification_cka.yaml` and
`ckadistill distill --help` for every flag.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    from ckadistill.classification import run_distill
    from ckadistill.config import (
        ClassificationTrainingArguments,
        DataArguments,
        DistillArguments,
        DistillModelArguments,
        parse_config,
    )

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        model_args, data_args, distill_args, training_args = parse_config(
            (DistillModelArguments, DataArguments, DistillArguments, ClassificationTrainingArguments),
            argv,
            prog="ckadistill distill",
            description="Distil a fine-tuned classification teacher into a smaller student (CKA by default).",
        )
        metrics = run_distill(model_args, data_args, distill_args, training_args)
    except ValueError as err:
        logger.debug("distill failed", exc_info=True)
        print(f"ckadistill distill: error: {err}", file=sys.stderr)
        return 2
    print(f"Student saved to {training_args.output_dir}")
    for key in sorted(metrics):
        if key.startswith(("eval_", "test_", "teacher_")) and not key.endswith(("runtime", "_per_second")):
            print(f"  {key}: {metrics[key]:.4f}")
    return 0
