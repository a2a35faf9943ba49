"""A fast path for the common shape of a domain file, exactly equal to the YAML loader or nothing.

Pure, bottom layer. PyYAML (even with libyaml) spends ~12 us on each mailbox of a domain file,
most of the cost of a cold parse at a million mailboxes. Almost every domain file has one plain
shape, the one ``schemas/domain.schema.json`` documents and the examples show::

    domain: example.com
    mailboxes:
      - address: alice@example.com
        password: "{BLF-CRYPT}$2y$05$..."
    aliases: []

``load`` reads that shape line by line and returns the same Python object ``yaml.load`` with the
safe loader returns. Anything outside a deliberately narrow grammar (non-ASCII or control
characters, tabs, CR, document markers, tags, anchors, flow collections other than ``[]``, block
scalars, escapes, multi-line scalars, unknown or duplicate keys, a plain scalar the YAML resolver
would not read as a string ...) makes it return None, and the caller uses the real YAML parser,
which also produces the error messages. tests/test_fastyaml.py checks the equality on generated
documents, near-misses included.
"""

from __future__ import annotations

import re
from typing import Any

import yaml.resolver

# Keys of the domain file format (schemas/domain.schema.json); any other key takes the slow path.
_KEYS = frozenset({"domain", "mailboxes", "aliases", "address", "password", "source", "destination"})
# Printable ASCII and newline only: no tab, CR, control characters or non-ASCII text.
_UNUSUAL = re.compile(r"[^\n\x20-\x7e]")
# A scalar: double-quoted without escapes, single-quoted without '' and plain from a narrow set of
# characters (no ':', '#', quotes other than an inner "'", brackets or braces, first an alphanumeric).
_SCALAR = r"""(?:"([^"\\]*)"|'([^']*)'|([A-Za-z0-9][A-Za-z0-9._+'=@/%&*!?^`|~$-]*))"""
_END = r"(?: +#.*)? *\Z"  # trailing spaces and an optional comment
_KEY = r"([a-z]+)"
_TOP_SCALAR = re.compile(_KEY + ": +" + _SCALAR + _END)
_TOP_OPEN = re.compile(_KEY + ":" + _END)
_TOP_EMPTY = re.compile(_KEY + r": +\[\]" + _END)
_ITEM = re.compile(r"( *)- +" + _KEY + ": +" + _SCALAR + _END)
_FIELD = re.compile(r"( *)" + _KEY + ": +" + _SCALAR + _END)
_BLANK_OR_COMMENT = re.compile(r" *(?:#.*)?\Z")
_STR_TAG = "tag:yaml.org,2002:str"
_RESOLVER = yaml.resolver.Resolver()


def _scalar(double: str | None, single: str | None, plain: str) -> str | None:
    """The string a matched scalar loads as, or None when YAML would load something else."""
    if double is not None:
        return double
    if single is not None:
        return single
    # Plain scalars go through YAML's implicit resolvers: "yes", "null", "1.5", "0x1f", "2024-01-01"
    # and friends are not strings. Those the resolver would not leave as str take the slow path.
    if _RESOLVER.resolve(yaml.ScalarNode, plain, (True, False)) != _STR_TAG:  # type: ignore[no-untyped-call]
        return None
    return plain


def load(text: str) -> dict[str, Any] | None:
    """The document ``yaml.load(text, safe loader)`` returns, if ``text`` has the plain shape; else None."""
    if not text.isascii() or _UNUSUAL.search(text):
        return None
    doc: dict[str, Any] = {}
    seq: list[dict[str, str]] | None = None  # the block sequence being filled
    seq_indent = -1  # column of its "-"
    item: dict[str, str] | None = None  # the mapping of the current item
    item_indent = -1  # column of the item's keys
    for line in text.split("\n"):
        m = _ITEM.match(line)
        if m is not None:
            if seq is None or (seq and len(m.group(1)) != seq_indent) or m.group(2) not in _KEYS:
                return None
            value = _scalar(m.group(3), m.group(4), m.group(5))
            if value is None:
                return None
            seq_indent = len(m.group(1))
            item_indent = m.start(2)
            item = {m.group(2): value}
            seq.append(item)
            continue
        if _BLANK_OR_COMMENT.match(line):
            continue
        if line[0] != " ":
            if seq is not None and not seq:
                return None  # "key:" with no items loads as null
            seq = item = None
            m = _TOP_SCALAR.match(line)
            if m is not None:
                key = m.group(1)
                value = _scalar(m.group(2), m.group(3), m.group(4))
                if value is None or key not in _KEYS or key in doc:
                    return None
                doc[key] = value
                continue
            m = _TOP_EMPTY.match(line) or _TOP_OPEN.match(line)
            if m is None or m.group(1) not in _KEYS or m.group(1) in doc:
                return None
            doc[m.group(1)] = []
            if m.re is _TOP_OPEN:
                seq = doc[m.group(1)]
                seq_indent = -1
            continue
        m = _FIELD.match(line)
        if m is None or item is None or len(m.group(1)) != item_indent:
            return None
        key = m.group(2)
        value = _scalar(m.group(3), m.group(4), m.group(5))
        if value is None or key not in _KEYS or key in item:
            return None
        item[key] = value
    if not doc or (seq is not None and not seq):
        return None
    return doc
