"""`ckadistill quickstart [--flag value ...]`: the offline default job (see `ckadistill.quickstart`)."""

from __future__ import annotations

import logging
import sys


def main(argv: list[str]) -> int:
    from transformers import HfArgumentParser

    from ckadistill.quickstart import QuickstartArguments, run_quickstart

    parser = HfArgumentParser(QuickstartArguments, prog="ckadistill quickstart")
    parser.description = "Fine-tune MiniLM on BBC News, distil it into a small student with CKA, report."
    try:
        (args,) = parser.parse_args_into_dataclasses(args=argv)
    except ValueError as err:
        print(f"ckadistill quickstart: error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ckadistill").setLevel(logging.INFO)
    run_quickstart(args)
    return 0
