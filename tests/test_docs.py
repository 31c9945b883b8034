"""Every ``nemesis ...`` command line quoted in README.md and docs/*.md (code blocks and inline code) names a
command that exists and passes only options that command has, so the docs cannot go stale."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from nemesis_analysis.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
INLINE = re.compile(r"`([^`\n]+)`")
START = re.compile(r"^\s*(?:\$\s+)?(nemesis\s+[a-z].*)$")


def quoted_commands(text: str) -> list[str]:
    """The ``nemesis ...`` lines of the fenced blocks, then the inline code spans that are commands."""
    found = [m.group(1) for block in FENCE.findall(text) for line in block.splitlines() if (m := START.match(line))]
    found += [span for span in INLINE.findall(FENCE.sub("", text)) if START.match(span)]
    return found


def is_group(command) -> bool:
    return hasattr(command, "commands")  # typer's groups (typer may carry its own copy of click)


def resolve(words: list[str]) -> tuple[list[str], object, list[str]]:
    """(command path, its click command, the remaining words) for ``nemesis WORDS...``."""
    command = typer.main.get_command(app)
    path = []
    while is_group(command) and words and words[0] in command.commands:
        path.append(words[0])
        command = command.commands[words.pop(0)]
    return path, command, words


def problems(line: str) -> list[str]:
    """What does not parse in ``line``: an unknown command, or an option its command does not have."""
    path, command, rest = resolve(shlex.split(line, comments=True)[1:])
    if is_group(command):
        leftover = [w for w in rest if not w.startswith("-")]
        return [f"no command {' '.join(['nemesis', *path, *leftover[:1]])!r}"] if leftover else []
    options = {"--help"} | {name for p in command.params for name in p.opts + p.secondary_opts if name.startswith("-")}
    words = [w.strip("[]") for w in rest]  # usage notation: [--dataset D], --run ID | --prompt DIR
    flags = [w.split("=", 1)[0] for w in words if w.startswith("-") and w not in ("-", "|")]
    return [f"nemesis {' '.join(path)} has no option {flag}" for flag in flags if flag not in options]


QUOTED = [(page.relative_to(ROOT).as_posix(), line) for page in PAGES for line in quoted_commands(page.read_text())]


def test_the_docs_quote_commands():
    assert len(PAGES) > 5 and len(QUOTED) > 40
    assert {page for page, _ in QUOTED} >= {"README.md", "docs/config.md", "docs/studies.md", "docs/protocols.md"}


def test_the_checker_catches_stale_commands():
    assert problems("nemesis plot frequency --regularizer coop --as count") == []
    assert problems("nemesis plot frequency --nope 1") == ["nemesis plot frequency has no option --nope"]
    assert problems("nemesis plot frequencies") == ["no command 'nemesis plot frequencies'"]
    assert problems("nemesis evaluate --run RUN_ID | --prompt DIR [--dataset D] [--classes all|base|new]") == []


@pytest.mark.parametrize(("page", "line"), QUOTED, ids=[f"{page}: {line}" for page, line in QUOTED])
def test_quoted_command_parses(page, line):
    assert problems(line) == [], f"{page}: {line}"
    path, _, _ = resolve(shlex.split(line, comments=True)[1:])
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"{page}: {line}: {result.output}"
