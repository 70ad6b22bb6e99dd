"""`ckadistill distill [CONFIG.yaml] [--flag value ...]`: distil a teacher into a smaller student.

`--task classification` (the default) distils a sequence classifier; `--task summarization` or
`translation` an encoder-decoder (BART, mBART, T5, Marian, bert2bert), matching encoder and decoder
hidden states and scoring generated text; `--task general` a masked LM or a bare (sentence) encoder on
raw text, before any task. The YAML file supplies values, flags override them; see
`configs/classification_cka.yaml`, `configs/summarization_cka.yaml` and `ckadistill distill --help`.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def parse(argv: list[str]) -> tuple:
    """`(model, data, distill, training, generation)` arguments from `[CONFIG.yaml] [--flag value ...]`.

    Raises:
        ValueError: a bad value, a missing or unreadable preset, an unknown preset key.
    """
    from ckadistill.config import (
        DataArguments,
        DistillArguments,
        DistillModelArguments,
        GenerationArguments,
        TaskTrainingArguments,
        parse_config,
    )

    return parse_config(
        (DistillModelArguments, DataArguments, DistillArguments, TaskTrainingArguments, GenerationArguments),
        argv,
        prog="ckadistill distill",
        description="Distil a fine-tuned teacher into a smaller student (CKA by default): a classifier "
        "(--task classification), an encoder-decoder (--task summarization or translation), or a pretrained "
        "masked LM or sentence encoder on raw text (--task general).",
    )


def main(argv: list[str]) -> int:
    from ckadistill.runs import check_model_folder
    from ckadistill.trainer import NonFiniteLossError

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        model_args, data_args, distill_args, training_args, generation_args = parse(argv)
        check_model_folder(model_args.teacher, "--teacher")
        if model_args.student is not None:
            check_model_folder(model_args.student, "--student")
        elif Path(model_args.teacher).is_dir():  # a student will be built: is the family one we can cut?
            from transformers import AutoConfig

            from ckadistill.families import get_family

            get_family(AutoConfig.from_pretrained(model_args.teacher))
        if data_args.is_seq2seq:
            from ckadistill.tasks.seq2seq import run_distill

            metrics = run_distill(model_args, data_args, distill_args, training_args, generation_args)
        elif data_args.task == "general":
            from ckadistill.tasks.general import run_distill

            metrics = run_distill(model_args, data_args, distill_args, training_args)
        else:
            from ckadistill.tasks.classification import run_distill

            metrics = run_distill(model_args, data_args, distill_args, training_args)
    except ValueError as err:
        logger.debug("distill failed", exc_info=True)
        print(f"ckadistill distill: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"ckadistill distill: stopped: {err}", file=sys.stderr)
        return 1
    print(f"Student saved to {training_args.output_dir}")
    for key in sorted(metrics):
        if key.startswith(("eval_", "test_", "teacher_")) and not key.endswith(("runtime", "_per_second")):
            print(f"  {key}: {metrics[key]:.4f}")
    return 0
