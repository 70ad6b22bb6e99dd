"""`ckadistill quickstart [--task classification|summarization] [--flag value ...]`: the offline default jobs.

`--task classification` (the default) runs `ckadistill.quickstart` (MiniLM topic classifier on BBC News);
`--task summarization` runs `ckadistill.quickstart_headlines` (a bert2bert MiniLM writing BBC News
headlines). `ckadistill quickstart --task summarization --help` lists the flags of the headline job.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

TASKS = ("classification", "summarization")
PROG = "ckadistill quickstart"


def split_task(argv: list[str]) -> tuple[str, list[str]]:
    """The `--task` value (default 'classification') and the other arguments, in order.

    Raises:
        ValueError: `--task` without a value, or an unknown task.
    """
    task, rest = "classification", []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--task":
            if i + 1 >= len(argv):
                raise ValueError(f"--task needs a value: {' or '.join(TASKS)}")
            task, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--task="):
            task = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    if task not in TASKS:
        raise ValueError(f"--task must be {' or '.join(TASKS)}, got {task!r}")
    return task, rest


def parse(argv: list[str]) -> tuple[str, Any]:
    """The task and the job's arguments (`QuickstartArguments` or `HeadlineQuickstartArguments`).

    Raises:
        ValueError: an unknown task or a bad value (argparse exits with status 2 on an unknown flag).
    """
    from transformers import HfArgumentParser

    task, argv = split_task(argv)
    if task == "summarization":
        from ckadistill.quickstart_headlines import HeadlineQuickstartArguments as Arguments

        prog = f"{PROG} --task summarization"
        description = (
            "Fine-tune a bert2bert MiniLM to write BBC News headlines from the lead paragraph, distil it "
            "into a small student with CKA over encoder and decoder, report."
        )
    else:
        from ckadistill.quickstart import QuickstartArguments as Arguments

        prog = PROG
        description = (
            "Fine-tune MiniLM on BBC News, distil it into a small student with CKA, report. "
            "`--task summarization` runs the headline job instead (see `--task summarization --help`)."
        )
    parser = HfArgumentParser(Arguments, prog=prog)
    parser.description = description
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    return task, args


def main(argv: list[str]) -> int:
    from ckadistill.quickstart import check_job_folder

    try:
        task, args = parse(argv)
        check_job_folder(Path(args.output_dir))
    except ValueError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    if task == "summarization":
        from ckadistill.quickstart_headlines import run_headline_quickstart as run
    else:
        from ckadistill.quickstart import run_quickstart as run
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("ckadistill").setLevel(logging.INFO)
    run(args)
    return 0
