"""`ckadistill pseudo-label`: write a teacher's generations for a data file (sequence-level KD data).

    ckadistill pseudo-label --teacher outputs/teacher --data train.csv --output train_pseudo.jsonl \
        --num_beams 6 --max_new_tokens 62 --no_repeat_ngram_size 3
    ckadistill distill preset.yaml --train_file train_pseudo.jsonl --target_column pseudo_target

See `ckadistill.tasks.pseudo_label` for the output format, `--mix` and resuming after a kill.
"""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger(__name__)

PROG = "ckadistill pseudo-label"


def parse(argv: list[str]) -> tuple:
    """`(pseudo-label, data, generation)` arguments from `[CONFIG.yaml] [--flag value ...]`.

    Raises:
        ValueError: a bad value, a missing or unreadable preset, an unknown preset key.
    """
    from ckadistill.config import GenerationArguments, parse_config
    from ckadistill.tasks.pseudo_label import PseudoLabelArguments, PseudoLabelDataArguments

    return parse_config(
        (PseudoLabelArguments, PseudoLabelDataArguments, GenerationArguments),
        argv,
        prog=PROG,
        description="Generate with an encoder-decoder teacher for every row of a data file and write the "
        "rows with the outputs as JSON lines (sequence-level distillation data; resumable).",
    )


def main(argv: list[str]) -> int:
    from ckadistill.tasks.pseudo_label import run_pseudo_label

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        args, data_args, generation_args = parse(argv)
        counts = run_pseudo_label(args, data_args, generation_args)
    except ValueError as err:
        logger.debug("pseudo-label failed", exc_info=True)
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    print(
        f"Wrote {counts['lines']} lines for {counts['rows']} rows to {args.output} "
        f"({counts['resumed']} rows resumed, {counts['generated']} generated)"
    )
    return 0
