"""Postfix's diagnostics mapped back to repository files and lines (``LineMapper``).

A staged path and line in ``postconf``/``postmap`` output becomes ``postfix/NAME:LINE`` of the repo.
Called by ``validate.stage`` and ``validate.tables``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from reconciler.desired.types import POSTFIX_DIR, DesiredFile, repo_path
from reconciler.errors import Problem
from reconciler.postfix import (
    ToolResult,
)

# "file /x/master.cf: line 12: ..." and "/x/canonical, line 3: ..." and "cidr map /x/a.cidr, line 2: ..."
_LINE_REF = re.compile(r"(?P<path>/[^\s,:]+)(?::|,) line (?P<line>\d+):? ?")
_FILE_REF = re.compile(r"(?P<path>/[^\s,:]+): ")
_QUOTED_LINE = re.compile(r' in "(.+)"$')
_QUOTED_TAIL = re.compile(r': "(.+)"$')
OUTSIDE_STAGE = ".rootfs"  # outside tables are staged here (a name no repo file can have)
_UNUSED = re.compile(r"unused parameter: (?P<name>[\w]+)=")
_UNDEFINED = re.compile(r"undefined parameter: (?P<name>[\w]+)")


def staged_name(name: str) -> str:
    """Where a managed file is staged, relative to the stage: outside tables under ``.rootfs/``.

    Never the absolute path itself: staging writes, and an outside table's live path is real.
    """
    return OUTSIDE_STAGE + name if name.startswith("/") else name


def file_of_staged(rel: str) -> str:
    """The managed file name of a path relative to the stage (the inverse of ``staged_name``)."""
    return rel[len(OUTSIDE_STAGE) :] if rel.startswith(OUTSIDE_STAGE + "/") else rel


class LineMapper:
    """Turns Postfix diagnostics about staged paths into ``postfix/NAME[:line]`` problems."""

    def __init__(self, stage: Path, files: Mapping[str, DesiredFile]) -> None:
        self._stage = str(stage)
        self._files = files
        self._lines: dict[str, list[str]] = {}

    def _text_lines(self, name: str) -> list[str]:
        if name not in self._lines:
            f = self._files.get(name)
            self._lines[name] = f.template.decode("utf-8").split("\n") if f else []
        return self._lines[name]

    def parameter_line(self, name: str, file: str = "main.cf") -> int | None:
        pattern = re.compile(rf"^\s*{re.escape(name)}\s*=") if file == "main.cf" else None
        for number, line in enumerate(self._text_lines(file), start=1):
            if pattern is not None and pattern.match(line):
                return number
            if pattern is None and re.search(rf"(^|\s|-o\s*){re.escape(name)}=", line):
                return number
        return None

    def _reference_line(self, name: str, file: str) -> int | None:
        pat = re.compile(rf"\$(?:{re.escape(name)}\b|\{{{re.escape(name)}\}}|\({re.escape(name)}\))")
        for number, line in enumerate(self._text_lines(file), start=1):
            if not line.lstrip().startswith("#") and pat.search(line):
                return number
        return None

    def _rel(self, path: str) -> str | None:
        if path.startswith(self._stage + "/"):
            return file_of_staged(path[len(self._stage) + 1 :])
        return None

    def problems(self, result: ToolResult) -> Iterable[Problem]:
        for diag in result.diagnostics:
            text = diag.text
            m = _LINE_REF.search(text)
            if m and self._rel(m["path"]) is not None:
                name = self._rel(m["path"]) or ""
                message = (text[: m.start()] + text[m.end() :]).strip().removeprefix("file ").strip()
                if diag.level == "warning" and "skipping" not in message and "ignoring" not in message:
                    message = f"{message} (Postfix skips or misreads this line)"
                yield Problem(repo_path(name), int(m["line"]), message or text)
                continue
            f = _FILE_REF.search(text)
            rel = self._rel(f["path"]) if f else None
            if f and rel is not None:
                name = rel
                message = text[f.end() :].strip()
                line = None
                if (u := _UNUSED.search(message)) is not None:
                    line = self.parameter_line(u["name"], name)
                    message = f"unused parameter {u['name']}: Postfix ignores it (misspelled or obsolete?)"
                elif (d := _UNDEFINED.search(message)) is not None:
                    line = self._reference_line(d["name"], name)
                    message = f"${d['name']} is used but never defined"
                elif (q := _QUOTED_TAIL.search(message)) is not None:
                    found = self._find_line(q.group(1), (name,))
                    line = found[1] if found else None
                yield Problem(repo_path(name), line, message)
                continue
            quoted = _QUOTED_LINE.search(text)
            found = self._find_line(quoted.group(1)) if quoted else None
            if found:
                yield Problem(POSTFIX_DIR + found[0], found[1], text)
                continue
            yield Problem(
                POSTFIX_DIR + "main.cf", None, f"{diag.level}: {text.replace(self._stage, '$config_directory')}"
            )

    def _find_line(self, quoted: str, names: tuple[str, ...] = ("master.cf", "main.cf")) -> tuple[str, int] | None:
        """The file and line holding a line Postfix quoted (whitespace folded)."""
        want = " ".join(quoted.split())
        for name in names:
            for number, line in enumerate(self._text_lines(name), start=1):
                if " ".join(line.split()) == want:
                    return name, number
        return None
