"""Reading a documentation page into the examples the docs test runs.

The convention is described in ``docs/contributing-docs.md`` (and at the top
of ``tests/docs/test_docs.py``). This module only parses: it turns a page
into a list of :class:`Block` in page order, with the directives that apply
to each, and refuses what it does not understand.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from markdown_it import MarkdownIt

# Fence languages the test executes.
PYTHON = {"python", "py"}
SHELL = {"console", "shell", "bash", "sh"}
SQL = {"sql"}
# Fence languages that are not code to run: diagrams, plain text, data and
# configuration files. A `text` fence right after a code block is its output.
NOT_CODE = {"", "text", "mermaid", "markdown", "md", "json", "yaml", "yml", "toml", "ini",
            "dockerfile", "systemd", "diff", "promql", "html"}
# Configuration files: written to the page's directory when their first line
# is a comment naming them (`# pyproject.toml`), like python files.
CONFIG = {"toml", "ini", "yaml", "yml", "cfg"}

_DIRECTIVE = re.compile(r"<!--\s*(no-run|setup|setup-sql|roles|output)\s*:(.*?)-->", re.S)
_FILE_HEADER = re.compile(r"^#\s*([\w./-]+\.py)\b")
_CONFIG_HEADER = re.compile(r"^#\s*([\w./-]+\.\w+)\s*$", re.M)


class PageError(Exception):
    """The page breaks the convention (reported with its file and line)."""


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    no_run: str | None = None  # the reason, when marked <!-- no-run: … -->
    output: str | None = None  # the text fence that follows, for a python block
    unordered: bool = False  # <!-- output: any order -->
    setup: bool = False  # hidden code from <!-- setup: … -->

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def file(self) -> str | None:
        """For a python block whose first line is ``# path.py``: that path."""
        if self.setup:
            return None
        if self.lang in CONFIG:
            match = _CONFIG_HEADER.match(self.code)
            return match.group(1) if match else None
        if self.lang not in PYTHON:
            return None
        match = _FILE_HEADER.match(self.code)
        return match.group(1) if match else None


@dataclass
class Page:
    path: Path
    blocks: list[Block] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # <!-- roles: a b --> (page-wide)


def _kind(info: str) -> str:
    return info.strip().split(maxsplit=1)[0].lower() if info.strip() else ""


def parse(path: Path, root: Path) -> Page:
    rel = path.relative_to(root)
    text = path.read_text()
    tokens = MarkdownIt("commonmark").parse(text)
    page = Page(rel)
    pending: dict[str, str] = {}  # directives waiting for the next fence
    previous: Block | None = None  # the python block a text fence right after it belongs to
    for token in tokens:
        line = (token.map[0] + 1) if token.map else 0
        if token.type == "html_block":
            for match in _DIRECTIVE.finditer(token.content):
                name, value = match.group(1), match.group(2)
                if name in ("setup", "setup-sql"):
                    lang = "python" if name == "setup" else "sql"
                    code = textwrap.dedent(value.strip("\n") if "\n" in value.strip() else value.strip())
                    page.blocks.append(Block(rel, line, lang, code.strip("\n") + "\n", setup=True))
                elif name == "roles":
                    page.roles += value.split()
                elif name == "no-run":
                    if not value.strip():
                        raise PageError(f"{rel}:{line}: <!-- no-run: … --> needs a reason")
                    pending["no-run"] = value.strip()
                else:
                    if value.strip() != "any order":
                        raise PageError(f"{rel}:{line}: unknown <!-- output: {value.strip()} -->")
                    pending["output"] = value.strip()
            continue
        if token.type != "fence":
            previous = None  # prose between a code block and a text fence: not its output
            continue
        lang = _kind(token.info)
        if lang == "text" and previous is not None and "no-run" not in pending:
            previous.output = token.content
            previous.unordered = pending.pop("output", None) is not None
            previous = None
            continue
        if lang in CONFIG and _CONFIG_HEADER.match(token.content):
            page.blocks.append(Block(rel, line, lang, token.content, no_run=pending.pop("no-run", None)))
            previous = None
            continue
        if lang in NOT_CODE:
            if pending:
                raise PageError(f"{rel}:{line}: {sorted(pending)} before a {lang or 'plain'} fence,"
                                " which is not run anyway")
            previous = None
            continue
        if lang not in PYTHON | SHELL | SQL:
            raise PageError(
                f"{rel}:{line}: a ```{lang} fence: the docs test does not know this language. Use one"
                " it runs (python, console, sql), or add it to NOT_CODE in tests/docs/pages.py if it"
                " is not code to run"
            )
        block = Block(rel, line, lang, token.content, no_run=pending.pop("no-run", None),
                      unordered=pending.pop("output", None) is not None)
        if pending:
            raise PageError(f"{rel}:{line}: {sorted(pending)} does not apply to a {lang} block")
        page.blocks.append(block)
        previous = block if lang in PYTHON and block.file is None and block.no_run is None else None
    if pending:
        raise PageError(f"{rel}: {sorted(pending)} at the end of the page applies to nothing")
    return page


def pages(root: Path) -> list[Path]:
    """Every page the docs test covers: README.md and docs/**/*.md."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
