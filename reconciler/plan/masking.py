"""Secret masking and diff text for the plan: live content shown without secret values, unified diffs.

Pure. ``plan.compute`` calls ``mask_live`` to compare a live file holding secrets with its template
(without ever showing a value) and ``unified`` for the text of a file change.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from reconciler.plan.types import LiveFile
from reconciler.vocab import SECRET_REF_BYTES


def mask_live(
    template: bytes, live: bytes, secrets: Mapping[str, bytes], *, secret_file: bool = False
) -> tuple[bytes, tuple[str, ...]]:
    """The live file with secret values put back as placeholders, and which secrets differ.

    Each live line that matches a template line with its placeholders as wildcards is shown as that
    template line; if the value found there differs from the current secret, the secret is
    "changed". Values of known secrets elsewhere are masked. In a file that holds a secret (its
    template names one, or ``secret_file``: the live file is not world-readable), every other line
    that the template does not hold verbatim, comments included, shows only up to its first
    separator: an old or hand-written credential is never printed.
    """
    patterns: list[tuple[re.Pattern[bytes], bytes, list[str]]] = []
    for tline in template.split(b"\n") if b"${secret:" in template else ():
        names = [m.group(1).decode() for m in SECRET_REF_BYTES.finditer(tline)]
        if names:
            parts = SECRET_REF_BYTES.split(tline)
            source = b"".join(re.escape(p) if i % 2 == 0 else b"(.*?)" for i, p in enumerate(parts))
            patterns.append((re.compile(source + b"\\Z", re.S), tline, names))
    if not patterns and not secret_file:
        # Nothing to hide line by line: only values of known secrets, wherever they appear (the
        # same as line by line, as long as a value spans no line break). Linear and in C: a
        # million-line map costs milliseconds here.
        for name, value in secrets.items():
            if len(value) >= 4 and b"\n" not in value and value in live:
                live = live.replace(value, b"${secret:" + name.encode() + b"}")
        return live, ()
    template_lines = set(template.split(b"\n"))
    # A hidden line keeps its head (key, parameter name) only where the template has a line with
    # the same head and no placeholder in it: a head is never a secret then.
    safe_heads = {_head(t) for t in template_lines if not SECRET_REF_BYTES.search(_head(t))} - {b""}
    changed: list[str] = []
    out: list[bytes] = []
    for line in live.split(b"\n"):
        for pattern, tline, names in patterns:
            m = pattern.match(line)
            if m:
                for name, value in zip(names, m.groups(), strict=True):
                    if secrets.get(name) != value and name not in changed:
                        changed.append(name)
                line = tline
                break
        else:
            for name, value in secrets.items():
                if len(value) >= 4 and value in line:
                    line = line.replace(value, b"${secret:" + name.encode() + b"}")
            if (patterns or secret_file) and line not in template_lines:
                line = _hide_value(line, safe_heads)
        out.append(line)
    return b"\n".join(out), tuple(changed)


def private(live: LiveFile) -> bool:
    """A live file others cannot read may hold a credential the revision no longer names."""
    return not live.mode & 0o004


_HIDDEN = b"<hidden: this file holds secrets>"
_HEAD_RE = re.compile(rb"(\s*[^\s=:#]+\s*[=:]?\s*)")


def _head(line: bytes) -> bytes:
    m = _HEAD_RE.match(line)
    return m.group(1).strip() if m else b""


def _hide_value(line: bytes, safe_heads: set[bytes]) -> bytes:
    stripped = line.lstrip()
    if not stripped:
        return line
    indent = line[: len(line) - len(stripped)]
    if stripped.startswith(b"#"):
        return indent + b"# " + _HIDDEN
    m = _HEAD_RE.match(line)
    if m and m.group(1).strip() in safe_heads:
        return m.group(1) + _HIDDEN
    return indent + _HIDDEN


def unified(before: bytes, after: bytes, name: str, *, context: int = 3, trim_from: int = 5000) -> str:
    """A unified diff of two texts (invalid UTF-8 replaced), ``live/NAME`` against ``desired/NAME``.

    ``difflib.unified_diff``'s text. From ``trim_from`` lines on, the lines both texts start and
    end with are set aside first (all but the context): difflib's matcher costs seconds on a
    million-line map, and one changed line then costs a few lines of matching. The hunks are as
    valid, though where lines repeat difflib might have aligned them differently.
    """
    a = before.decode("utf-8", "replace").splitlines(keepends=True)
    b = after.decode("utf-8", "replace").splitlines(keepends=True)
    if len(a) + len(b) < trim_from:
        return "".join(difflib.unified_diff(a, b, f"live/{name}", f"desired/{name}", n=context))
    limit = min(len(a), len(b))
    head = 0
    while head < limit and a[head] == b[head]:
        head += 1
    tail = 0
    while tail < limit - head and a[-1 - tail] == b[-1 - tail]:
        tail += 1
    skip = max(head - context, 0)
    cut = max(tail - context, 0)
    a_mid, b_mid = a[skip : len(a) - cut], b[skip : len(b) - cut]
    out: list[str] = []
    for group in difflib.SequenceMatcher(None, a_mid, b_mid).get_grouped_opcodes(context):
        if not out:
            out += [f"--- live/{name}\n", f"+++ desired/{name}\n"]
        first, last = group[0], group[-1]
        out.append(f"@@ -{_range(skip + first[1], skip + last[2])} +{_range(skip + first[3], skip + last[4])} @@\n")
        for tag, i1, i2, j1, j2 in group:
            if tag == "equal":
                out.extend(" " + line for line in a_mid[i1:i2])
                continue
            if tag in {"replace", "delete"}:
                out.extend("-" + line for line in a_mid[i1:i2])
            if tag in {"replace", "insert"}:
                out.extend("+" + line for line in b_mid[j1:j2])
    return "".join(out)


def _range(start: int, stop: int) -> str:
    """A unified diff's line range, as difflib writes it."""
    beginning = start + 1  # lines start numbering with one
    length = stop - start
    if length == 1:
        return str(beginning)
    if not length:
        beginning -= 1  # empty ranges begin at the line just before the range
    return f"{beginning},{length}"
