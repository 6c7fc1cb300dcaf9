"""Every `statex ...` command the documentation shows parses with the CLI as it is, and the spec, base and
script paths it names exist: a renamed flag or a moved file breaks this test, not a reader's run."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from statex.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "experiments").rglob("*.md"),
               *(ROOT / "bench").glob("*.md")])
FENCE = re.compile(r"^\s*```(\w*)\s*$")
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=\S*$")
REPO_DIRS = ("experiments/", "src/", "docs/", "bench/", "tests/")


def shell_lines(text: str):
    """(line number, line) of each line in a bash or sh fenced block, backslash continuations joined."""
    language, pending, start = None, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            language = None if language is not None else fence.group(1) or ""
            continue
        if language not in ("bash", "sh", "shell", "console"):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""


SPECS = sorted([*(ROOT / "experiments").rglob("*.yaml"), *(ROOT / "src" / "statex").rglob("*.yaml")])


def spec_comment_lines(text: str):
    """(line number, command) of each `#   statex ...` comment, as the specs' headers give their commands."""
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(r"^#\s+statex\s", line):
            yield number, line.lstrip("#")


def statex_commands():
    for doc in [*DOCS, *SPECS]:
        lines = spec_comment_lines if doc.suffix == ".yaml" else shell_lines
        for number, line in lines(doc.read_text(encoding="utf-8")):
            line = line.strip().removeprefix("$ ")
            try:
                words = shlex.split(line, comments=True)
            except ValueError:
                continue
            for command in split_commands(words):
                while command and ENV_ASSIGNMENT.match(command[0]):
                    command = command[1:]
                if len(command) >= 2 and command[0] == "statex" and "..." not in command:
                    yield pytest.param(without_optional_groups(command[1:]), id=f"{doc.relative_to(ROOT)}:{number}")


def split_commands(words: list[str]):
    """The commands of a line chained with &&, ||, ; or |."""
    command = []
    for word in words:
        if word in ("&&", "||", ";", "|"):
            yield command
            command = []
        else:
            command.append(word)
    yield command


def without_optional_groups(words: list[str]) -> list[str]:
    """A usage synopsis's optional groups ([--heads 1]) dropped: the rest must still parse."""
    kept, depth = [], 0
    for word in words:
        depth += word.startswith("[")
        if not depth:
            kept.append(word)
        depth -= word.endswith("]") and depth > 0
    return kept


COMMANDS = list(statex_commands())


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 40
    assert {c.values[0][0] for c in COMMANDS} >= {"demo", "compare", "eval", "expand", "train"}


@pytest.mark.parametrize("argv", COMMANDS)
def test_a_documented_command_parses_and_its_files_exist(argv):
    args = build_parser().parse_args(argv)
    outputs = {getattr(args, name) for name in ("out", "dst") if isinstance(getattr(args, name, None), str)}
    for word in argv:
        for value in word.split("=", 1)[-1].split(","):
            if value.startswith(REPO_DIRS) and value not in outputs and not value.startswith("experiments/*"):
                assert (ROOT / value).exists(), f"{value} is not in the repository"


def test_a_synopsis_keeps_its_required_words():
    assert without_optional_groups(["expand", "SRC", "[--heads", "1]", "[--json]", "--mode", "inherit"]) == [
        "expand", "SRC", "--mode", "inherit"]
    assert list(split_commands(["statex", "a", "&&", "statex", "b"])) == [["statex", "a"], ["statex", "b"]]


def test_a_renamed_flag_is_caught():
    with pytest.raises(Exception, match="unrecognized arguments"):
        build_parser().parse_args(["compare", "experiments/lm-recall/gla.yaml", "--no-such-flag"])
