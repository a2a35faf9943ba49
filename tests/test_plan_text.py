"""The plan's text helpers at scale: trimmed unified diffs and masking of files without secrets.

Pure unit tests. ``unified`` sets aside the lines both texts share at their start and end before
difflib matches the rest (from ``trim_from`` lines on); ``mask_live`` replaces known secret values
in one pass over a file that names no secret. Both must stay exact.
"""

from __future__ import annotations

import difflib
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan import mask_live, unified

_HUNK = re.compile(r"@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@\n")


def apply_patch(before: list[str], diff: str) -> list[str]:
    """Apply a unified diff (every line ends with a newline) to ``before``; strict about context."""
    lines = diff.splitlines(keepends=True)
    assert not lines or (lines[0].startswith("--- ") and lines[1].startswith("+++ "))
    out: list[str] = []
    pos = 0
    i = 2
    while i < len(lines):
        m = _HUNK.fullmatch(lines[i])
        assert m, lines[i]
        start = int(m.group(1)) - (0 if m.group(2) == "0" else 1)
        out.extend(before[pos:start])
        pos = start
        i += 1
        while i < len(lines) and not lines[i].startswith("@@"):
            tag, text = lines[i][0], lines[i][1:]
            if tag in " -":
                assert before[pos] == text, (pos, before[pos], text)
                pos += 1
            if tag in " +":
                out.append(text)
            i += 1
    out.extend(before[pos:])
    return out


_lines = st.lists(st.sampled_from(["a\n", "b\n", "c\n", "key value\n", "# comment\n", "\n"]), max_size=40)


@settings(max_examples=1500, deadline=None)
@given(
    _lines,
    st.lists(
        st.tuples(st.integers(0, 40), st.sampled_from(["del", "ins", "rep"]), st.sampled_from(["a\n", "z\n", "b\n"])),
        max_size=5,
    ),
)
def test_trimmed_diff_turns_before_into_after(before: list[str], edits: list[tuple[int, str, str]]) -> None:
    after = list(before)
    for pos, op, line in edits:
        pos = min(pos, len(after))
        if op == "ins":
            after.insert(pos, line)
        elif after:
            pos = min(pos, len(after) - 1)
            if op == "del":
                del after[pos]
            else:
                after[pos] = line
    a, b = "".join(before).encode(), "".join(after).encode()
    trimmed = unified(a, b, "f", trim_from=0)
    assert apply_patch(before, trimmed) == after
    assert (trimmed == "") == (before == after)
    exact = "".join(difflib.unified_diff(before, after, "live/f", "desired/f"))
    assert unified(a, b, "f") == exact  # small texts: difflib's very text


def test_one_changed_line_of_a_big_map() -> None:
    before = [f"user{i}@example.com\trelay{i % 7}\n" for i in range(100_000)]
    after = list(before)
    after[54_321] = "changed@example.com\trelay9\n"
    diff = unified("".join(before).encode(), "".join(after).encode(), "canonical")
    assert diff.splitlines()[2] == "@@ -54319,7 +54319,7 @@"
    assert diff.count("\n-") == 1 and diff.count("\n+") == 2  # "+++" and the new line
    assert apply_patch(before, diff) == after


def _mask_line_by_line(live: bytes, secrets: dict[str, bytes]) -> bytes:
    out = []
    for line in live.split(b"\n"):
        for name, value in secrets.items():
            if len(value) >= 4 and value in line:
                line = line.replace(value, b"${secret:" + name.encode() + b"}")
        out.append(line)
    return b"\n".join(out)


@settings(max_examples=1000, deadline=None)
@given(
    st.lists(
        st.sampled_from([b"alpha", b"beta", b"SECRET1", b"SECRET2", b"SEC", b"\n", b" ", b"RET1", b"x"]), max_size=30
    ),
    st.dictionaries(
        st.sampled_from(["one", "two", "three"]),
        st.sampled_from([b"SECRET1", b"SECRET2", b"SEC", b"RET1\nx", b"beta alpha", b"ECRET"]),
    ),
)
def test_mask_live_without_placeholders_equals_the_line_by_line_rule(
    parts: list[bytes], secrets: dict[str, bytes]
) -> None:
    live = b"".join(parts)
    masked, changed = mask_live(b"plain template\n", live, secrets)
    assert masked == _mask_line_by_line(live, secrets)
    assert changed == ()
