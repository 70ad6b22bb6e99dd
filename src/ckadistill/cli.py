"""The `ckadistill` command: a thin dispatcher over the typed entry points in `ckadistill.commands`.

Each sub-command lives in its own module with a `main(argv: list[str]) -> int`; modules are imported
only when their command runs, so `ckadistill --help` stays fast.
"""

from __future__ import annotations

import importlib
import sys

# command -> (module, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "ckadistill.commands.quickstart",
        "Offline default: MiniLM teacher -> small student on BBC News.",
    ),
    "make-student": (
        "ckadistill.commands.make_student",
        "Build and initialise a smaller student from a teacher.",
    ),
    "layer-map": (
        "ckadistill.commands.layer_map",
        "Print which student layer learns from which teacher layer.",
    ),
    "cka-map": ("ckadistill.commands.cka_map", "Teacher x student layer CKA on sample text (PNG + CSV)."),
    "finetune": (
        "ckadistill.commands.finetune",
        "Fine-tune a teacher (classification, summarization, translation).",
    ),
    "distill": ("ckadistill.commands.distill", "Distil a teacher into a student (CONFIG.yaml + flags)."),
    "evaluate": ("ckadistill.commands.evaluate", "Metrics, size and speed of several models side by side."),
    "export": (
        "ckadistill.commands.export",
        "A classifier as ONNX (fp32, optional int8), checked against PyTorch, with speed.",
    ),
    "pseudo-label": (
        "ckadistill.commands.pseudo_label",
        "Write a seq2seq teacher's outputs for a data file (sequence-level KD targets).",
    ),
    "trim-vocab": (
        "ckadistill.commands.trim_vocab",
        "Shrink a model's vocabulary (embeddings + tokenizer) to the tokens a task's text uses.",
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: ckadistill COMMAND [ARGS ...]", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `ckadistill COMMAND --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from ckadistill import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ckadistill: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
