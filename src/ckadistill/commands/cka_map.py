"""`ckadistill cka-map`: linear CKA between every teacher and every student layer on sample text.

    ckadistill cka-map --teacher T --student S --data texts.txt --output out/cka

writes `encoder.png` / `encoder.csv` (and `decoder.png` / `decoder.csv` for encoder-decoders) to the
output folder: rows are teacher hidden states, columns student hidden states, 0 = embeddings, and the
pairs of the chosen layer maps are boxed on the heatmaps.

Models load with the Auto class their family names (`AutoModel`, which drops task heads; a bert2bert
`EncoderDecoderModel` through `AutoModelForSeq2SeqLM`, since `AutoModel` does not map it).

Data: `.txt` (one text per line), `.csv` or `.jsonl` (the `--text-column` field). Encoder-decoders feed
the encoder the text and the decoder the `--target-column` field when given, else the text itself.
The decoder reads the tokenised target as it is (not shifted right): the comparison only needs both
models to read the same tokens, and the start-token convention differs from family to family.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ckadistill.analysis import make_batches
from ckadistill.commands import add_overwrite_flag
from ckadistill.commands.layer_map import MAP_HELP
from ckadistill.data import TEXT_SUFFIXES, read_texts

logger = logging.getLogger(__name__)


def build_parser(prog: str = "ckadistill cka-map") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Teacher x student layer CKA heatmaps and CSVs.")
    parser.add_argument("--teacher", required=True, help="Teacher model directory or hub name.")
    parser.add_argument("--student", required=True, help="Student model directory or hub name.")
    parser.add_argument("--data", required=True, help=f"Sample text file: {', '.join(TEXT_SUFFIXES)}.")
    parser.add_argument("--output", required=True, help="Folder for encoder/decoder .png and .csv files.")
    parser.add_argument("--max-samples", "--max_samples", dest="max_samples", type=int, default=256)
    parser.add_argument("--max-length", "--max_length", dest="max_length", type=int, default=128)
    parser.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=16)
    parser.add_argument(
        "--text-column",
        "--text_column",
        dest="text_column",
        default="text",
        help="Text field of .csv/.jsonl.",
    )
    parser.add_argument(
        "--target-column",
        "--target_column",
        dest="target_column",
        default=None,
        help="Decoder-side text field of .csv/.jsonl for encoder-decoders (default: the text itself).",
    )
    parser.add_argument("--tokenizer", default=None, help="Tokenizer directory (default: the teacher's).")
    parser.add_argument(
        "--encoder-map", "--encoder_map", dest="encoder_map", default="uniform", help=MAP_HELP
    )
    parser.add_argument(
        "--decoder-map", "--decoder_map", dest="decoder_map", default="uniform", help=MAP_HELP
    )
    parser.add_argument(
        "--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', ..."
    )
    add_overwrite_flag(parser)
    return parser


def summarise(part: str, matrix, pairs: tuple[tuple[int, int], ...]) -> str:
    """Mapped-pair CKAs and, per student hidden state, the most similar teacher hidden state."""
    lines = [f"{part}: {matrix.shape[0]} teacher x {matrix.shape[1]} student hidden states"]
    if pairs:
        cells = ", ".join(f"{s}:{t}={matrix[t, s]:.3f}" for s, t in pairs)
        mean = sum(matrix[t, s] for s, t in pairs) / len(pairs)
        lines.append(f"  mapped pairs (student:teacher=CKA): {cells}; mean {mean:.3f}")
    best = ", ".join(f"{s}:{int(matrix[:, s].argmax())}" for s in range(matrix.shape[1]))
    lines.append(f"  most similar teacher state per student state: {best}")
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments, as `main` reads them (argparse exits with status 2 on a bad flag)."""
    return build_parser().parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for flag, value in (
        ("--max-samples", args.max_samples),
        ("--max-length", args.max_length),
        ("--batch-size", args.batch_size),
    ):
        if value < 1:
            print(f"ckadistill cka-map: error: {flag} must be >= 1, got {value}", file=sys.stderr)
            return 2
    import torch
    import transformers
    from transformers import AutoConfig, AutoTokenizer

    from ckadistill.analysis import layer_cka_matrix, save_cka_csv, save_cka_heatmap
    from ckadistill.families import get_family, read_field
    from ckadistill.layer_maps import layer_map_for
    from ckadistill.runs import check_folder_is_free, check_model_folder
    from ckadistill.vocab import teacher_token_ids

    # Phase 1: folders, layer maps, vocabularies and data, checked before any weights load.
    try:
        check_model_folder(args.teacher, "--teacher")
        check_model_folder(args.student, "--student")
        check_folder_is_free(
            args.output,
            "--output",
            overwrite=args.overwrite_output_dir,
            overwrite_flag="--overwrite-output-dir",
        )
    except ValueError as err:
        print(f"ckadistill cka-map: error: {err}", file=sys.stderr)
        return 2
    teacher_config = AutoConfig.from_pretrained(args.teacher)
    student_config = AutoConfig.from_pretrained(args.student)
    try:
        layer_map = layer_map_for(teacher_config, student_config, args.encoder_map, args.decoder_map)
        t_family, s_family = get_family(teacher_config), get_family(student_config)
        t_vocab = int(read_field(teacher_config, t_family.vocab))
        s_vocab = int(read_field(student_config, s_family.vocab))
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.teacher)
        token_ids = None
        if t_vocab != s_vocab:
            # A student with a trimmed vocabulary (distill --trim_vocab, trim-vocab): its own tokenizer makes
            # the batches, and the teacher reads the same tokens by its ids.
            try:
                student_tokenizer = AutoTokenizer.from_pretrained(args.student)
                if len(student_tokenizer) > s_vocab:
                    raise ValueError(
                        f"it has {len(student_tokenizer)} tokens for the student's {s_vocab} rows"
                    )
                token_ids = teacher_token_ids(student_tokenizer, tokenizer)
            except (OSError, ValueError) as err:
                raise ValueError(
                    f"teacher and student vocabularies differ ({t_vocab} vs {s_vocab}) and the student's tokenizer "
                    f"is not a trimmed copy of the teacher's ({err}); both must read the same tokens"
                ) from err
            tokenizer = student_tokenizer
        texts, targets = read_texts(args.data, args.text_column, args.target_column, args.max_samples)
    except ValueError as err:
        print(f"ckadistill cka-map: error: {err}", file=sys.stderr)
        return 2
    logger.info("Read %d texts from %s", len(texts), args.data)

    # Phase 2: models.
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    teacher = getattr(transformers, t_family.auto_model).from_pretrained(args.teacher).to(device)
    student = getattr(transformers, s_family.auto_model).from_pretrained(args.student).to(device)
    encoder_decoder = bool(teacher.config.is_encoder_decoder)
    batches = make_batches(
        tokenizer,
        texts,
        targets,
        encoder_decoder=encoder_decoder,
        batch_size=args.batch_size,
        max_length=args.max_length,
    )

    # Phase 3: one matrix per stack, written as PNG + CSV.
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    parts = (
        {"encoder": layer_map.encoder, "decoder": layer_map.decoder}
        if encoder_decoder
        else {"encoder": layer_map.encoder}
    )
    for part, pairs in parts.items():
        logger.info("Computing the %s CKA map", part)
        matrix = layer_cka_matrix(teacher, student, batches, part=part, teacher_token_ids=token_ids)
        title = f"{part} linear CKA: teacher {Path(args.teacher).name} (rows) vs student {Path(args.student).name} (columns)"
        save_cka_heatmap(matrix, output / f"{part}.png", title=title, pairs=list(pairs))
        save_cka_csv(matrix, output / f"{part}.csv")
        print(summarise(part, matrix, pairs))
        print(f"  wrote {output / f'{part}.png'} and {output / f'{part}.csv'}")
    return 0
