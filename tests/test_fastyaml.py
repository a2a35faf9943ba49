"""The fast path for domain files returns exactly what the YAML loader returns, or nothing.

Pure unit tests (no services): the oracle is the real loader of ``reconciler.desired`` (libyaml's
CSafeLoader refusing duplicate keys). Documents are generated from the domain file's grammar with
near-misses mixed in: odd indentation, comments, every quoting style, scalars YAML resolves to
something other than a string, characters that end or start plain scalars, duplicate keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import fastyaml
from reconciler.desired.yamlfile import _Loader, load_yaml

# Examples per generated-document property in CI; RECONCILER_FASTYAML_EXAMPLES=1500 (or more) for a
# thorough run before touching the fast path. 600 keeps both properties under 40 s on 2 cores.
EXAMPLES = int(os.environ.get("RECONCILER_FASTYAML_EXAMPLES", "600"))

ROOT = Path(__file__).resolve().parent.parent


def oracle(text: str) -> tuple[bool, Any]:
    try:
        return True, yaml.load(text, Loader=_Loader)  # noqa: S506 - the safe loader
    except yaml.YAMLError:
        return False, None


def check(text: str) -> Any:
    fast = fastyaml.load(text)
    ok, slow = oracle(text)
    if fast is not None:
        assert ok, f"fast path accepted what YAML refuses:\n{text}"
        assert fast == slow, f"fast path differs from YAML:\n{text}\nfast={fast!r}\nyaml={slow!r}"
        assert type(fast) is type(slow)
    return fast


CANONICAL = """\
# yaml-language-server: $schema=../../schemas/domain.schema.json
domain: example.com
mailboxes:
  - address: o'brien@example.com
    password: "{BLF-CRYPT}$2y$05$S8WCYuR3Ho8p6ADh28xkUO8R7YsHsV15cdy35jX8BGF00x1BB4rk2"
  # a comment between items
  - address: 'alice@example.com'   # trailing comment
    password: "{SHA512-CRYPT}$6$abc/def"

aliases:
- source: "@example.com"
  destination: alice@example.com
"""


def test_canonical_shape_takes_the_fast_path() -> None:
    fast = check(CANONICAL)
    assert fast == {
        "domain": "example.com",
        "mailboxes": [
            {
                "address": "o'brien@example.com",
                "password": "{BLF-CRYPT}$2y$05$S8WCYuR3Ho8p6ADh28xkUO8R7YsHsV15cdy35jX8BGF00x1BB4rk2",
            },
            {"address": "alice@example.com", "password": "{SHA512-CRYPT}$6$abc/def"},
        ],
        "aliases": [{"source": "@example.com", "destination": "alice@example.com"}],
    }


@pytest.mark.parametrize("path", sorted((ROOT / "example-repo" / "domains").glob("*.yaml")), ids=lambda p: p.name)
def test_example_repo_domain_files_take_the_fast_path(path: Path) -> None:
    assert check(path.read_text()) is not None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("domain: yes\n", "resolves to a bool"),
        ("domain: null\n", "resolves to null"),
        ("domain: 1.5\n", "resolves to a float"),
        ("domain: 0x1f\n", "resolves to an int"),
        ("domain: 2024-01-01\n", "resolves to a date"),
        ("domain: 1.e+5\n", "resolves to a float"),
        ("domain: a.b\ndomain: c.d\n", "duplicate key"),
        ("domain: a.b\nmailboxes:\n  - address: a@a.b\n    address: b@a.b\n", "duplicate key in an item"),
        ("domain: a.b\nmailboxes:\n", "key without items loads as null"),
        ("domain: a.b\nmailboxes:\naliases: []\n", "key without items loads as null"),
        ("domain: a.b\r\n", "CR"),
        ("domain:\ta.b\n", "tab"),
        ("domain: 'o''brien'\n", "escaped single quote"),
        ('domain: "a\\tb"\n', "escape"),
        ("domain: a.b\nmailboxes:\n  - address: a@a.b\n      continued\n", "multi-line plain scalar"),
        ("domain: a.b\nmailboxes:\n  - address: a@a.b\n   password: x\n", "odd indentation"),
        ("domain: a.b\nmailboxes:\n  - address: a@a.b\n - address: b@a.b\n", "items at two indents"),
        ("domain: a.b\nmailboxes:\n  -\n    address: a@a.b\n", "item on its own line"),
        ("domain: a.b\nmailboxes: [{address: a@a.b}]\n", "flow collection"),
        ("domain: &x a.b\n", "anchor"),
        ("domain: !!str a.b\n", "tag"),
        ("---\ndomain: a.b\n", "document marker"),
        ("domain: a.b#c\n", "'#' without a space"),
        ("domain: |\n  a.b\n", "block scalar"),
        ("domain: a.b\nowner: someone\n", "unknown key"),
        ("domain: exämple.com\n", "non-ASCII"),
        ("# only a comment\n", "empty document"),
        ("", "empty document"),
        ("  domain: a.b\n", "indented top level"),
        ('domain: "a.b" "c"\n', "two scalars"),
    ],
)
def test_near_misses_take_the_slow_path(text: str, why: str) -> None:
    assert check(text) is None, why


def test_load_yaml_uses_the_real_parser_for_errors() -> None:
    raw, problems = load_yaml("domains/a.b.yaml", b"domain: a.b\ndomain: c.d\n")
    assert raw is None
    assert problems and problems[0].line == 2 and "duplicate key" in problems[0].message


# ------------------------------------------------------------------------------------------------
# Generated documents

_CHARS = "abz09.@_+-'=/%&*!?^`|~$#:\"{}[], \\>"
_scalar_text = st.text(alphabet=_CHARS, min_size=0, max_size=12)
_special = st.sampled_from(
    ["yes", "No", "null", "~", "true", "1.5", "0x1f", "1_000", "2024-01-01", "1:20", ".inf", "=", "<<", "1.e+5", "off"]
)
_address = st.builds(
    lambda a, b: f"{a}@{b}",
    st.from_regex(r"[a-z0-9][a-z0-9.'+=-]{0,8}", fullmatch=True),
    st.from_regex(r"[a-z0-9-]{1,6}\.[a-z]{2,4}", fullmatch=True),
)
_value = st.one_of(_address, _special, _scalar_text)


@st.composite
def _rendered_scalar(draw: st.DrawFn) -> str:
    value = draw(_value)
    style = draw(st.sampled_from(["plain", "double", "single"]))
    if style == "double":
        return f'"{value}"'
    if style == "single":
        return f"'{value}'"
    return value


_key = st.one_of(
    st.sampled_from(["address", "password", "source", "destination", "domain"]),
    st.sampled_from(["mailboxes", "aliases", "owner", "true", "Address"]),
)
_tail = st.sampled_from(["", "", "", "  ", " # note", "#x", "  #"])


@st.composite
def _document(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(["domain", "mailboxes", "aliases", "domain", "owner"]))
        kind = draw(st.sampled_from(["scalar", "seq", "seq", "empty", "open"]))
        if kind == "scalar":
            lines.append(f"{key}: {draw(_rendered_scalar())}{draw(_tail)}")
            continue
        if kind == "empty":
            lines.append(f"{key}: []{draw(_tail)}")
            continue
        lines.append(f"{key}:{draw(_tail)}")
        if kind == "open":
            continue
        dash = draw(st.sampled_from([0, 2, 2, 4]))
        gap = draw(st.sampled_from([1, 1, 1, 3]))
        for _ in range(draw(st.integers(0, 3))):
            fields = draw(st.lists(_key, min_size=1, max_size=3))
            lines.append(" " * dash + "-" + " " * gap + f"{fields[0]}: {draw(_rendered_scalar())}{draw(_tail)}")
            for field in fields[1:]:
                indent = dash + 1 + gap + draw(st.sampled_from([0, 0, 0, 0, 1, -1]))
                lines.append(" " * max(indent, 0) + f"{field}: {draw(_rendered_scalar())}{draw(_tail)}")
            if draw(st.booleans()):
                lines.append(draw(st.sampled_from(["", "# c", "    # c", "  "])))
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n"]))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_document())
def test_generated_documents_equal_the_yaml_loader(text: str) -> None:
    check(text)


@st.composite
def _clean_document(draw: st.DrawFn) -> str:
    """A well-formed domain file in any of the layouts the fast path must take."""
    tail = st.sampled_from(["", "", "  ", " # note", "   #"])
    address = st.builds(
        lambda a, b: f"{a}@{b}",
        st.from_regex(r"[a-z0-9][a-z0-9.+=_-]{0,8}", fullmatch=True),
        st.from_regex(r"[a-z][a-z0-9-]{0,5}\.[a-z]{2,4}", fullmatch=True),
    )
    hashed = st.from_regex(r"\{BLF-CRYPT\}\$2y\$05\$[A-Za-z0-9./]{1,20}", fullmatch=True)
    quote = st.sampled_from(['"{}"', "'{}'", "{}"])
    rendered = st.one_of(
        st.builds(str.format, quote, address), st.builds(str.format, st.sampled_from(['"{}"', "'{}'"]), hashed)
    )
    lines = [f"domain: {draw(address).partition('@')[2]}{draw(tail)}"]
    for key, fields in (("mailboxes", ("address", "password")), ("aliases", ("source", "destination"))):
        if draw(st.booleans()):
            lines.append(f"{key}: []{draw(tail)}")
            continue
        lines.append(f"{key}:{draw(tail)}")
        dash, gap = draw(st.integers(0, 4)), draw(st.integers(1, 3))
        for _ in range(draw(st.integers(1, 4))):
            first, second = draw(st.permutations(fields))
            if draw(st.booleans()):
                lines.append(draw(st.sampled_from(["", "# c", "      # c"])))
            lines.append(" " * dash + "-" + " " * gap + f"{first}: {draw(rendered)}{draw(tail)}")
            lines.append(" " * (dash + 1 + gap) + f"{second}: {draw(rendered)}{draw(tail)}")
    return "\n".join(lines) + "\n"


@settings(max_examples=500, deadline=None)
@given(_clean_document())
def test_the_fast_path_takes_every_well_formed_layout(text: str) -> None:
    """Guards against a fast path that silently never fires."""
    ok, slow = oracle(text)
    assert ok
    fast = check(text)
    assert fast is not None, text
    assert fast == slow


def test_the_fast_path_fires_on_generated_canonical_files() -> None:
    mailboxes = "".join(
        f'  - address: "u{i}@a.example"\n    password: "{{BLF-CRYPT}}$2y$05${i:053d}"\n' for i in range(500)
    )
    aliases = "".join(f"  - source: a{i}@a.example\n    destination: u{i}@a.example\n" for i in range(50))
    text = f"domain: a.example\nmailboxes:\n{mailboxes}aliases:\n{aliases}"
    fast = check(text)
    assert fast is not None
    assert len(fast["mailboxes"]) == 500 and len(fast["aliases"]) == 50


@st.composite
def _mutated_document(draw: st.DrawFn) -> str:
    """A well-formed file with a few characters inserted, deleted or replaced: the nearest misses."""
    text = draw(_clean_document())
    for _ in range(draw(st.integers(1, 3))):
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        ch = draw(st.sampled_from([*" -:#'\"{}[]&*!|>%@`,?\n\\", "  ", "yes", "null", "1.5", "\t"]))
        if op == "insert":
            text = text[:pos] + ch + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + 1 :]
        else:
            text = text[:pos] + ch + text[pos + 1 :]
    return text


@settings(max_examples=EXAMPLES, deadline=None)
@given(_mutated_document())
def test_mutated_documents_equal_the_yaml_loader(text: str) -> None:
    check(text)
