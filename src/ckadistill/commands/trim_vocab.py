"""`ckadistill trim-vocab`: shrink a saved model's vocabulary to the tokens a task's text uses.

Reads the model and its fast tokenizer from `--model`, counts the tokens of the `--data` texts, keeps
the special tokens, the tokens the text uses (`--min_count`, `--keep_top`), the language codes of
`--languages` and the pieces each tokenizer type needs for unseen text (see `ckadistill.vocab`), and
saves the trimmed model and tokenizer in `--output`. Exit status 2 on bad input, found before any work.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ckadistill.commands import add_overwrite_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ckadistill trim-vocab",
        description="Keep only the vocabulary a task's text uses: slice the embedding rows (and output "
        "rows, per-token biases), renumber the config's token ids and rewrite the tokenizer to match.",
    )
    parser.add_argument("--model", required=True, help="Folder of a saved model with its fast tokenizer.")
    parser.add_argument(
        "--data",
        required=True,
        nargs="+",
        help="Task text whose tokens are kept: .txt (one text per line), .csv or .jsonl (--text_column).",
    )
    parser.add_argument(
        "--output", required=True, help="Folder the trimmed model and tokenizer are saved in."
    )
    parser.add_argument("--text_column", default="text", help="Text field of .csv / .jsonl --data files.")
    parser.add_argument(
        "--min_count", type=int, default=1, help="Keep a data token only if it occurs at least this often."
    )
    parser.add_argument(
        "--keep_top",
        type=int,
        help="Size of the trimmed vocabulary at most: special tokens and fallback pieces first, then the "
        "most frequent data tokens that fit (default: every data token passing --min_count).",
    )
    parser.add_argument(
        "--languages",
        nargs="+",
        help="Language codes kept by a multilingual tokenizer (NLLB: eng_Latn ron_Latn ...; default: all).",
    )
    parser.add_argument(
        "--heldout",
        help="Text file to measure coverage on (share of tokens tokenised as before); default: --data.",
    )
    add_overwrite_flag(parser)  # stale slow-tokenizer files there are removed too
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """The parsed arguments, as `main` reads them (argparse exits with status 2 on a bad flag)."""
    return build_parser().parse_args(argv)


def _check_paths(args: argparse.Namespace) -> Path:
    """The model folder, after checking it holds weights and that --output may be written."""
    from ckadistill.runs import check_folder_is_free, check_model_folder

    model_dir, output = Path(args.model), Path(args.output)
    if not model_dir.is_dir():
        raise ValueError(f"--model {model_dir} is not a folder; give the folder a model was saved in")
    if not (model_dir / "config.json").is_file():
        raise ValueError(f"--model {model_dir} has no config.json; save the model there with save_pretrained")
    check_model_folder(model_dir, "--model")
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder")
    if output.resolve() == model_dir.resolve():
        raise ValueError("--output must be a folder other than --model")
    check_folder_is_free(
        output, "--output", overwrite=args.overwrite_output_dir, overwrite_flag="--overwrite_output_dir"
    )
    for flag, value in (("--min_count", args.min_count), ("--keep_top", args.keep_top)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    return model_dir


def _load_model(model_dir: Path):
    """The model with the class its config names (task heads kept), else the bare model."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(model_dir)
    architectures = config.architectures or []
    if architectures and architectures[0] in transformers.__all__:
        return getattr(transformers, architectures[0]).from_pretrained(model_dir)
    return transformers.AutoModel.from_pretrained(model_dir)


def run(args: argparse.Namespace) -> dict:
    """Check everything, trim, save; returns the `trim_vocab` record. ValueError on bad input."""
    from transformers import AutoConfig, AutoTokenizer

    from ckadistill import vocab
    from ckadistill.data import read_texts

    # Inputs: paths, model type, tokenizer, languages, --keep_top, text; all before the model loads.
    model_dir = _check_paths(args)
    vocab.vocab_table(AutoConfig.from_pretrained(model_dir))
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", *vocab.SLOW_TOKENIZER_FILES)
    if not any((model_dir / name).is_file() for name in tokenizer_files):
        # AutoTokenizer would quietly build an empty default tokenizer of the model's type
        raise ValueError(
            f"--model {model_dir} has no tokenizer (no tokenizer.json or tokenizer_config.json); save the "
            "model's fast tokenizer beside it (tokenizer.save_pretrained)"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, TypeError) as err:
        raise ValueError(
            f"--model {model_dir}: no tokenizer could be loaded ({err}); save the model's fast tokenizer "
            "beside it (tokenizer.save_pretrained)"
        ) from err
    vocab.check_tokenizer(tokenizer)
    vocab.check_keep_top(args.keep_top, vocab.always_kept(tokenizer, languages=args.languages))
    texts: list[str] = []
    for path in args.data:
        texts += read_texts(path, args.text_column, flag="data", text_flag="text_column")[0]
    heldout = None
    if args.heldout is not None:
        heldout = read_texts(args.heldout, args.text_column, flag="heldout", text_flag="text_column")[0]

    # Trim.
    model = _load_model(model_dir)
    trimmed, new_tokenizer, info = vocab.trim_vocabulary(
        model,
        tokenizer,
        texts,
        min_count=args.min_count,
        keep_top=args.keep_top,
        languages=args.languages,
        heldout=heldout,
    )
    info["data_files"] = [str(p) for p in args.data]
    info["heldout_file"] = args.heldout
    info["source_model"] = str(model_dir)
    trimmed.config.ckadistill["trim_vocab"] = info

    # Save: model (safetensors) and tokenizer, no slow-tokenizer file describing the old vocabulary.
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    for name in vocab.SLOW_TOKENIZER_FILES:
        stale = output / name
        if stale.exists():
            logging.getLogger(__name__).info("removing stale %s from %s (old vocabulary)", name, output)
            stale.unlink()
    trimmed.save_pretrained(output)
    new_tokenizer.save_pretrained(output)
    return info


def main(argv: list[str]) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        info = run(args)
    except ValueError as err:
        print(f"ckadistill trim-vocab: error: {err}", file=sys.stderr)
        return 2
    kept = ", ".join(f"{n} {reason}" for reason, n in info["kept_by"].items() if n)
    print(f"trimmed model saved to {args.output}")
    print(f"vocabulary: {info['old_vocab_size']:,} -> {info['new_vocab_size']:,} tokens (kept: {kept})")
    print(
        f"parameters: {info['old_parameters']:,} -> {info['new_parameters']:,} "
        f"({info['old_parameters'] / info['new_parameters']:.2f}x smaller)"
    )
    if info["languages"] is not None:
        extra = sorted(set(info["languages"]) - set(args.languages or info["languages"]))
        note = f" ({', '.join(extra)}: used by the tokenizer's post-processor or the config)" if extra else ""
        print(f"language codes kept: {' '.join(info['languages'])}{note}")
    where = f"--heldout {args.heldout}" if args.heldout else "the --data texts"
    print(
        f"coverage: {info['coverage']:.2%} of {info['coverage_tokens']:,} tokens in {where} tokenise as before"
    )
    return 0
