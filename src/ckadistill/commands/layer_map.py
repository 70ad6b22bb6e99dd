"""`ckadistill layer-map`: print which student layer learns from which teacher layer.

Only the two configs are read (no weights), so this is instant:

    ckadistill layer-map --teacher facebook/bart-large --student out/student --encoder-map distilbart
"""

from __future__ import annotations

import argparse
import logging
import sys

from ckadistill.families import num_decoder_layers, num_encoder_layers
from ckadistill.layer_maps import KEYWORDS, format_layer_map, layer_map_for

logger = logging.getLogger(__name__)

MAP_HELP = (
    f"one of {', '.join(KEYWORDS)}, or STUDENT:TEACHER pairs of hidden-state indices such as "
    "'0:0,1:2,2:4' (0 = embeddings, i = output of layer i)"
)


def build_parser(prog: str = "ckadistill layer-map") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Print the resolved teacher/student layer maps.")
    parser.add_argument("--teacher", required=True, help="Teacher model directory or hub name (config only).")
    parser.add_argument("--student", required=True, help="Student model directory or hub name (config only).")
    parser.add_argument(
        "--encoder-map", "--encoder_map", dest="encoder_map", default="uniform", help=MAP_HELP
    )
    parser.add_argument(
        "--decoder-map",
        "--decoder_map",
        dest="decoder_map",
        default="uniform",
        help=MAP_HELP + "; ignored for encoder-only models",
    )
    return parser


def format_table(
    stack: str, spec: str, pairs: tuple[tuple[int, int], ...], n_student: int, n_teacher: int
) -> str:
    """A readable table of one stack's pairs, ending with the compact string to reuse as a flag."""
    lines = [f"{stack}: {spec!r} (student {n_student} layers, teacher {n_teacher} layers)"]
    if pairs:
        lines.append("  student  teacher")
        for s, t in pairs:
            note = "  (embeddings)" if s == 0 and t == 0 else ""
            lines.append(f"  {s:>7}  {t:>7}{note}")
    else:
        lines.append("  no hidden-state matching")
    lines.append(f"  --{stack}-map {format_layer_map(list(pairs))}")
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments, as `main` reads them (argparse exits with status 2 on a bad flag)."""
    return build_parser().parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    from transformers import AutoConfig

    teacher_config = AutoConfig.from_pretrained(args.teacher)
    student_config = AutoConfig.from_pretrained(args.student)
    try:
        layer_map = layer_map_for(teacher_config, student_config, args.encoder_map, args.decoder_map)
    except ValueError as err:
        print(f"ckadistill layer-map: error: {err}", file=sys.stderr)
        return 2
    print(
        format_table(
            "encoder",
            args.encoder_map,
            layer_map.encoder,
            num_encoder_layers(student_config),
            num_encoder_layers(teacher_config),
        )
    )
    if num_decoder_layers(teacher_config) > 0:
        print()
        print(
            format_table(
                "decoder",
                args.decoder_map,
                layer_map.decoder,
                num_decoder_layers(student_config),
                num_decoder_layers(teacher_config),
            )
        )
    return 0
