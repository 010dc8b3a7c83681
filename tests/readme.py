"""The README's commands, for tests that run them exactly as written.

A test names a section by its heading (or a prefix the commands start with) and gets the text
the README shows there, so a test breaks when the README changes. README text that a branch
has written but not yet merged lives in ``docs/pending/*.md`` under the same headings (helpers
may not edit README.md); a section found there is the newer text and is read first. Once the
lead merges it (and empties docs/pending) the README itself is read.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
PENDING = REPO_ROOT / "docs" / "pending"

_FENCE = re.compile(r"^(```+)\s*([\w-]*)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: the heading it sits under, its language tag ("" if none), its text."""

    heading: str
    lang: str
    text: str
    source: Path

    def lines(self) -> list[str]:
        """The block's non-blank lines that are not whole-line comments, as written."""
        return [line for line in self.text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def blocks(path: Path = README) -> list[Block]:
    """Every fenced code block of a Markdown file, in order, with the heading above it."""
    found, heading, fence, lang, body = [], "", None, "", []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _FENCE.match(line)
        if fence is None:
            if match:
                fence, lang, body = match.group(1), match.group(2), []
            elif heading_match := _HEADING.match(line):
                heading = heading_match.group(2)
        elif match and match.group(1) == fence and not match.group(2):
            found.append(Block(heading, lang, "\n".join(body) + "\n", path))
            fence = None
        else:
            body.append(line)
    return found


def section_blocks(heading: str, lang: str | None = None) -> list[Block]:
    """The code blocks under ``heading`` (exactly), from pending README text if any, else the README.

    ``lang``: only blocks with that language tag (e.g. "bash": commands, not what they print).
    """
    for path in [*sorted(PENDING.glob("*.md")), README]:
        chosen = [b for b in blocks(path) if b.heading == heading and (lang is None or b.lang == lang)]
        if chosen:
            return chosen
    raise AssertionError(f"no {lang or ''} code block under the heading {heading!r} in {README} or {PENDING}")


def inline_code(path: Path = README) -> list[str]:
    """Every inline code span (`...`) outside fenced blocks."""
    spans, inside = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            inside = not inside
        elif not inside:
            spans.extend(re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line))
    return spans


def commands_starting(prefix: str, path: Path = README) -> list[str]:
    """Every command the file shows that starts with ``prefix``: fenced lines and inline code, in order,
    each once, as written (a trailing ``# comment`` included)."""
    found = [line.strip() for b in blocks(path) for line in b.lines() if line.strip().startswith(prefix)]
    found += [span.strip() for span in inline_code(path) if span.strip().startswith(prefix)]
    return list(dict.fromkeys(found))


def words(command: str) -> list[str]:
    """A command's words as the shell splits them, comments dropped."""
    return shlex.split(command, comments=True)
