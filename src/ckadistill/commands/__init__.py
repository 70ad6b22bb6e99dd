"""One module per `ckadistill` sub-command, each with `build_parser`, `parse(argv)` and `main(argv) -> int`."""

from __future__ import annotations

import argparse


def add_overwrite_flag(parser: argparse.ArgumentParser, what: str = "--output") -> None:
    """`--overwrite-output-dir` / `--overwrite_output_dir`: the one way past the refusal of an output
    folder that already holds files (`ckadistill.runs.check_folder_is_free`)."""
    parser.add_argument(
        "--overwrite-output-dir",
        "--overwrite_output_dir",
        dest="overwrite_output_dir",
        action="store_true",
        help=f"Write into an {what} folder that already holds files (files of the same name are replaced; "
        "nothing else in it is deleted).",
    )
