"""`ckadistill export STUDENT_DIR --output DIR [--int8] [--data FILE] [...]`: a classifier as ONNX.

Writes `model.onnx` (and `model_int8.onnx` with `--int8`), `config.json`, the tokenizer files and
`export_report.json` into DIR, after checking the ONNX files against PyTorch with onnxruntime (see
`ckadistill.export`). Exit status: 0 when the fp32 ONNX model agrees with PyTorch, 1 when it does not,
2 on bad input (found before any work).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ckadistill.commands import add_overwrite_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckadistill export",
        description="Export a saved sequence classifier to ONNX (optionally also int8), check it against "
        "PyTorch with onnxruntime, and print size, logit differences, accuracy and speed side by side.",
    )
    parser.add_argument(
        "student_dir",
        metavar="STUDENT_DIR",
        help="A classifier saved with save_pretrained, tokenizer beside it.",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="Folder for model.onnx, config.json, tokenizer and export_report.json.",
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="Also write model_int8.onnx (dynamic quantisation, QInt8 weights).",
    )
    parser.add_argument(
        "--data",
        help="A .csv or .jsonl file with text and label columns: accuracy of every model on all of it "
        "(default: logits compared on a few built-in sentences, no accuracy).",
    )
    parser.add_argument("--text_column", default="text", help="Text column of --data.")
    parser.add_argument(
        "--label_column",
        default="label",
        help="Label column of --data: names of the model's labels (config.label2id) or class indices.",
    )
    parser.add_argument(
        "--max_length",
        type=int,
        help="Tokens kept per text (default: the length the model was distilled with, as recorded in its "
        "ckadistill_config.yaml, else 128).",
    )
    parser.add_argument(
        "--batch_size", type=int, default=32, help="Batch size for scoring and the second speed column."
    )
    add_overwrite_flag(parser)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments, an unset --max_length filled from the model's own record (argparse exits
    with status 2 on a bad flag)."""
    args = build_parser().parse_args(argv)
    if args.max_length is None:
        from ckadistill.commands.evaluate import recorded_lengths

        args.max_length = recorded_lengths([args.student_dir]).get("max_length", 128)
    return args


def main(argv: list[str]) -> int:
    args = parse(argv)
    # Our progress at INFO; the exporter's and quantiser's INFO chatter stays hidden.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ckadistill").setLevel(logging.INFO)
    from ckadistill.export import REPORT_FILE, ParityError, export_student, results_table

    try:
        report = export_student(
            args.student_dir,
            args.output,
            int8=args.int8,
            data=args.data,
            text_column=args.text_column,
            label_column=args.label_column,
            max_length=args.max_length,
            batch_size=args.batch_size,
            overwrite_output_dir=args.overwrite_output_dir,
        )
    except (ValueError, OSError) as err:
        print(f"ckadistill export: error: {err}", file=sys.stderr)
        return 2
    except ParityError as err:
        print(results_table(err.report))
        print(f"ckadistill export: check failed: {err}", file=sys.stderr)
        return 1
    print(results_table(report))
    print(
        f"\n{report['examples']} examples ({report['examples_from']}); speed over {report['speed_batches']} "
        f"batches after one warm-up, {report['torch_threads']} thread(s) for PyTorch and onnxruntime"
    )
    print(
        f"ONNX fp32 agrees with PyTorch (tolerance on the largest logit difference: {report['tolerance']:.2g})"
    )
    print(f"written to {args.output} (report: {REPORT_FILE})")
    return 0
