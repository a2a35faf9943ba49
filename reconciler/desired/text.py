"""Checks of a managed file's text and path: its shape under ``postfix/``, control characters, secrets.

Pure. Called by ``desired.build`` for every file of ``postfix/``, ``rootfs/`` and host replacements,
and by tests.
"""

from __future__ import annotations

import re

from reconciler.desired.types import (
    MAX_DEPTH,
)
from reconciler.errors import Problem
from reconciler.models import outside_path_problem
from reconciler.vocab import CONTROL_IN_TEXT, SECRET_NAME, SECRET_REF

# Names Postfix config files can safely have: no spaces, no shell or map metacharacters.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
# Built tables and editor leftovers never belong in the repo: the agent builds tables itself.
_GENERATED_SUFFIXES = (".db", ".lmdb", ".cdb", ".dir", ".pag", ".swp", "~")


def shape_problem(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) < 2 or (parts[0] == "domains" and len(parts) != 2):
        return f"unexpected path: only files directly inside {parts[0]}/ are allowed"
    if len(parts) > (MAX_DEPTH if parts[0] == "postfix" else 4 * MAX_DEPTH):
        return f"unexpected path: at most {MAX_DEPTH - 2} levels of subdirectories"
    for part in parts[1:-1]:
        if not _SAFE_NAME.match(part):
            return f"unexpected directory name {part!r}: use letters, digits, '.', '_', '+' and '-'"
    if parts[0] == "rootfs":
        problem = outside_path_problem("/" + "/".join(parts[1:]))
        if problem:
            return f"rootfs/ holds a table at its absolute path: {problem}"
    name = parts[-1]
    if not _SAFE_NAME.match(name):
        return f"unexpected file name {name!r}: use letters, digits, '.', '_', '+' and '-'"
    if name.endswith(_GENERATED_SUFFIXES):
        return "built tables and editor files do not belong in the repo (the agent builds tables)"
    if parts[0] == "domains" and not name.endswith(".yaml"):
        return "unexpected file: domains/ holds only <domain>.yaml files"
    return None


def text_problems(path: str, data: bytes) -> list[Problem]:
    """UTF-8, no NUL, no control characters but tab and newline; one problem per bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Problem(path, data[: exc.start].count(b"\n") + 1, "not valid UTF-8 text")]
    out: list[Problem] = []
    last_line = 0
    for m in CONTROL_IN_TEXT.finditer(text):
        number = text.count("\n", 0, m.start()) + 1
        if number != last_line:
            ch = m.group(0)
            what = "NUL byte" if ch == "\0" else f"control character {ch!r}"
            out.append(Problem(path, number, f"{what} (only tab and newline are allowed)"))
            last_line = number
    return out


def secret_refs(path: str, text: str) -> tuple[frozenset[str], list[Problem]]:
    """Names of the ``${secret:NAME}`` placeholders in a text, and malformed ones as problems."""
    names: set[str] = set()
    problems: list[Problem] = []
    if "${secret:" not in text:
        return frozenset(), problems  # the common case, and a million-line map costs no line loop
    for number, line in enumerate(text.split("\n"), start=1):
        for m in SECRET_REF.finditer(line):
            if SECRET_NAME.match(m.group(1)):
                names.add(m.group(1))
            else:
                problems.append(Problem(path, number, f"invalid secret name {m.group(1)!r}"))
        if "${secret:" in SECRET_REF.sub("", line):
            problems.append(Problem(path, number, "unterminated ${secret:...} placeholder"))
    return frozenset(names), problems
