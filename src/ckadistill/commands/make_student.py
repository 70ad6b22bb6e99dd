"""`ckadistill make-student`: build a smaller student from a teacher and save it with the tokenizer.

The teacher folder may hold any family of `ckadistill.families`, a bert2bert `EncoderDecoderModel`
included (its encoder and decoder shrink together: `--hidden-size`, `--encoder-layers`, `--decoder-layers`).
"""

from __future__ import annotations

import argparse
import logging
import sys

from ckadistill.commands import add_overwrite_flag
from ckadistill.students import INITS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckadistill make-student",
        description="Build a student of the teacher's family (same class, labels and vocabulary), shrink "
        "its width / depth / FFN / heads, initialise it from the teacher and save it with the tokenizer.",
    )
    parser.add_argument("--teacher", required=True, help="Teacher model: a local folder or a hub id.")
    parser.add_argument("--output", required=True, help="Folder the student and tokenizer are saved in.")
    parser.add_argument("--hidden-size", type=int, help="Student width (default: the teacher's).")
    parser.add_argument(
        "--layers", type=int, help="Layers of an encoder-only student (default: the teacher's)."
    )
    parser.add_argument("--encoder-layers", type=int, help="Encoder layers of an encoder-decoder student.")
    parser.add_argument("--decoder-layers", type=int, help="Decoder layers of an encoder-decoder student.")
    parser.add_argument(
        "--ffn-size", type=int, help="FFN inner width (default: the teacher's, scaled with --hidden-size)."
    )
    parser.add_argument(
        "--heads", type=int, help="Attention heads (default: keeps the teacher's head dimension)."
    )
    parser.add_argument(
        "--init",
        choices=INITS,
        default="slice",
        help="random: the family's own init; slice: teacher layers k·i, top-left blocks (the paper); "
        "copy: DistilBART's alternating layers at equal width; pca: slice with the residual width "
        "rotated into the teacher's top principal directions (needs --init-data).",
    )
    parser.add_argument(
        "--init-data",
        help="Sample text measured by --init pca: .txt (one text per line), .csv or .jsonl (--init-text-column).",
    )
    parser.add_argument(
        "--init-text-column", default="text", help="Text field of a .csv / .jsonl --init-data file."
    )
    parser.add_argument(
        "--init-samples",
        type=int,
        default=256,
        help="How many --init-data texts --init pca measures (the first ones; 0: every text).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random initialisation.")
    add_overwrite_flag(parser)
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments, as `main` reads them (argparse exits with status 2 on a bad flag)."""
    return build_parser().parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from ckadistill.runs import check_folder_is_free, check_model_folder
    from ckadistill.students import create_student

    try:
        check_model_folder(args.teacher, "--teacher")
        check_folder_is_free(
            args.output,
            "--output",
            overwrite=args.overwrite_output_dir,
            overwrite_flag="--overwrite-output-dir",
        )
        out = create_student(
            args.teacher,
            args.output,
            hidden_size=args.hidden_size,
            num_layers=args.layers,
            encoder_layers=args.encoder_layers,
            decoder_layers=args.decoder_layers,
            ffn_size=args.ffn_size,
            num_heads=args.heads,
            init=args.init,
            init_data=args.init_data,
            init_text_column=args.init_text_column,
            init_samples=args.init_samples,
            seed=args.seed,
        )
    except ValueError as err:
        print(f"ckadistill make-student: error: {err}", file=sys.stderr)
        return 2
    from transformers import AutoConfig

    info = AutoConfig.from_pretrained(out).ckadistill
    print(f"student saved to {out}")
    print(
        f"parameters: {info['student_parameters']:,} (teacher {info['teacher_parameters']:,}, "
        f"{info['compression']:.2f}x smaller)"
    )
    for stack, mapping in info["layer_map"].items():
        print(f"{stack} layer map (student:teacher): {mapping}")
    return 0
