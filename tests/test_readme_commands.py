"""Every `ckadistill` command line in the README's code blocks and in the presets' usage comments names a
real command, parses with that command's own parser, and names presets that exist.

Parsing only: nothing is loaded or trained. A command that documents optional flags as
`[--flag value ...]` is checked without them.
"""

import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch

from ckadistill.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = re.compile(r"\[[^\]]*\]")  # "[--flag value ...]", "[--fast]": documented options, left out


def code_block_lines(markdown: str) -> list[str]:
    """The lines inside fenced code blocks, with backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            lines.append(pending)
            pending = ""
    return lines


def command_lines(lines: list[str]) -> list[str]:
    """The lines that start with `ckadistill COMMAND` (after an optional `$ ` or `Usage: `)."""
    found = []
    for line in lines:
        match = re.match(r"(?:\$ |Usage: )?(ckadistill [a-z-]+.*)", line.strip())
        if match:
            found.append(match.group(1))
    return found


def readme_commands() -> list[str]:
    return command_lines(code_block_lines((ROOT / "README.md").read_text(encoding="utf-8")))


def preset_commands() -> list[tuple[str, str]]:
    """`(preset name, command)` for every `ckadistill ...` line in a preset's comments."""
    found = []
    for preset in sorted((ROOT / "configs").glob("*.yaml")):
        comments = [
            line.lstrip("# ")
            for line in preset.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")
        ]
        found += [(preset.name, command) for command in command_lines(comments)]
    return found


def check_command(line: str) -> None:
    """Parse `line` as the CLI would, with the command's own parser; fail with the line on any error.

    Presets made for GPUs turn bf16 on, which transformers refuses on a machine without one: the check
    adds `--bf16 false` there, since the hardware is not what it checks.
    """
    words = shlex.split(OPTIONAL.sub(" ", line), comments=True)
    name, argv = words[1], [w for w in words[2:] if w != "..."]
    if name not in COMMANDS:
        pytest.fail(f"unknown command {name!r} in: {line}")
    for word in argv:
        if word.endswith((".yaml", ".yml")):
            preset = ROOT / word
            if not preset.is_file():
                pytest.fail(f"preset {word} does not exist (in: {line})")
            if (
                re.search(r"^bf16: true", preset.read_text(encoding="utf-8"), re.M)
                and not torch.cuda.is_available()
            ):
                argv = [*argv, "--bf16", "false"]
    module = importlib.import_module(COMMANDS[name][0])
    try:
        module.parse(argv)
    except SystemExit as exit_:  # argparse: unknown flag, missing required flag, bad type
        pytest.fail(f"`{line}` does not parse (argparse exit {exit_.code})")
    except ValueError as err:
        pytest.fail(f"`{line}` does not parse: {err}")


def test_the_readme_documents_commands():
    names = {line.split()[1] for line in readme_commands()}
    assert {"quickstart", "distill", "finetune", "evaluate", "make-student", "cka-map"} <= names


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses(line, monkeypatch):
    monkeypatch.chdir(ROOT)  # presets and paths are relative to the repository
    check_command(line)


@pytest.mark.parametrize(("preset", "line"), preset_commands())
def test_preset_usage_command_parses(preset, line, monkeypatch):
    monkeypatch.chdir(ROOT)
    check_command(line)


def test_a_broken_command_is_caught(monkeypatch):
    monkeypatch.chdir(ROOT)
    for broken in (
        "ckadistill distil configs/classification_cka.yaml",  # no such command
        "ckadistill distill configs/no_such_preset.yaml",  # no such preset
        "ckadistill distill configs/classification_cka.yaml --no_such_flag 1",  # unknown flag
        "ckadistill make-student --teacher t --output o --layers two",  # bad type
        "ckadistill quickstart --task poetry",  # unknown task
    ):
        with pytest.raises(pytest.fail.Exception):
            check_command(broken)
