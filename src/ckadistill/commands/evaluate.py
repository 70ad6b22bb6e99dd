"""`ckadistill evaluate MODEL_DIR [MODEL_DIR ...] --data FILE [--task TASK] [--split test] [--output FILE]`.

Task metrics, parameter counts and speed of saved models, side by side as a Markdown table; the first
model is the reference for compression and speed-up. Classifiers (`--task classification`, the
default): examples/s at batch 1 and 32. Encoder-decoders (`--task summarization` or `translation`):
ROUGE or BLEU/chrF of generated text (`--num_beams`, `--max_new_tokens`, ...) and the latency of
generating a fixed number of tokens (`--latency_*`).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def build_parser():
    """The `HfArgumentParser` of the data and generation dataclasses plus evaluate's own flags."""
    from transformers import HfArgumentParser

    from ckadistill.config import DataArguments, GenerationArguments

    parser = HfArgumentParser(
        (DataArguments, GenerationArguments),
        prog="ckadistill evaluate",
        usage="ckadistill evaluate MODEL_DIR [MODEL_DIR ...] --data FILE [--task TASK] [--split test] "
        "[--output FILE] [--flag value ...]",
        description="Metrics, size and speed of saved classifiers (--task classification) or encoder-decoders "
        "(--task summarization / translation) side by side (the first is the reference).",
    )
    parser.add_argument(
        "model_dirs", nargs="+", metavar="MODEL_DIR", help="Saved models; the first is the reference."
    )
    parser.add_argument("--data", help="A data file (csv/tsv/json/jsonl/parquet) or a `datasets` hub name.")
    parser.add_argument(
        "--split", default="test", help="Split to score: the split --data becomes, or a hub split."
    )
    parser.add_argument("--output", help="Also write the Markdown table to this file.")
    parser.add_argument(
        "--batch_size", type=int, default=32, help="Batch size for the metrics pass (classification)."
    )
    parser.add_argument(
        "--speed_examples",
        type=int,
        default=64,
        help="Examples timed at batch 1 and batch 32 (classification).",
    )
    parser.add_argument(
        "--latency_batch_size",
        type=int,
        default=16,
        help="Generation latency is timed at batch 1 and at this batch size (summarization, translation).",
    )
    parser.add_argument(
        "--latency_new_tokens",
        type=int,
        default=32,
        help="Tokens every model generates per example when timed, whatever it would stop at.",
    )
    parser.add_argument(
        "--latency_examples", type=int, default=32, help="First examples of the split timed for latency."
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)."
    )
    return parser


LENGTH_FLAGS = ("max_length", "max_source_length", "max_target_length")


def recorded_lengths(model_dirs: list[str]) -> dict[str, int]:
    """The longest `max_length` / `max_source_length` / `max_target_length` the models were trained with,
    read from the `ckadistill_config.yaml` beside each (models without one are skipped)."""
    import yaml

    from ckadistill.runs import CONFIG_FILE

    found: dict[str, int] = {}
    for model_dir in model_dirs:
        path = Path(model_dir) / CONFIG_FILE
        if not path.is_file():
            continue
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for name in LENGTH_FLAGS:
            if isinstance(config.get(name), int):
                found[name] = max(found.get(name, 0), config[name])
    return found


def parse(argv: list[str]) -> tuple:
    """`(data, generation, extra)` arguments, with `--data` given to `--split` (a file) or the hub (a name).

    A length flag left unset takes the longest value the models were trained with (so no model is
    scored on shorter inputs than it learnt from), else its default.

    Raises:
        ValueError: a bad value (argparse exits with status 2 on an unknown flag).
    """
    data_args, generation_args, extra = build_parser().parse_args_into_dataclasses(
        args=argv, look_for_args_file=False
    )
    given = {arg.split("=")[0].lstrip("-") for arg in argv if arg.startswith("--")}
    lengths = {k: v for k, v in recorded_lengths(extra.model_dirs).items() if k not in given}
    if lengths:
        logger.warning("Lengths from the models' training runs: %s (set the flags to override)", lengths)
        data_args = dataclasses.replace(data_args, **lengths)
    if extra.data is not None:
        if Path(extra.data).exists():
            data_args = dataclasses.replace(
                data_args,
                **{f"{extra.split}_file": extra.data},
                validation_split_fraction=0.0,
                test_split_fraction=0.0,
            )
        else:
            data_args = dataclasses.replace(data_args, dataset_name=extra.data)
    return data_args, generation_args, extra


def main(argv: list[str]) -> int:
    import torch

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        data_args, generation_args, extra = parse(argv)
        from ckadistill.runs import check_model_folder

        for model_dir in extra.model_dirs:
            check_model_folder(model_dir, "MODEL_DIR")
        if extra.threads is not None:
            torch.set_num_threads(extra.threads)
        if data_args.is_seq2seq:
            from ckadistill.tasks.seq2seq_evaluate import evaluate_models, results_table

            rows = evaluate_models(
                extra.model_dirs,
                data_args,
                generation_args,
                split=extra.split,
                latency_batch_size=extra.latency_batch_size,
                latency_new_tokens=extra.latency_new_tokens,
                latency_examples=extra.latency_examples,
                device=extra.device,
            )
        else:
            from ckadistill.tasks.classification import evaluate_models
            from ckadistill.tasks.classification_metrics import results_table

            rows = evaluate_models(
                extra.model_dirs,
                data_args,
                split=extra.split,
                batch_size=extra.batch_size,
                speed_examples=extra.speed_examples,
                device=extra.device,
            )
    except (ValueError, OSError) as err:
        logger.debug("evaluate failed", exc_info=True)
        print(f"ckadistill evaluate: error: {err}", file=sys.stderr)
        return 2
    table = results_table(rows)
    print(table)
    if extra.output:
        Path(extra.output).parent.mkdir(parents=True, exist_ok=True)
        Path(extra.output).write_text(table + "\n", encoding="utf-8")
    return 0
