"""The product's shared vocabulary: closed sets of names and the grammars every stage agrees on.

Bottom layer (imports nothing from the package): the MySQL tables, the per-domain digest, the
``${secret:NAME}`` placeholder, the mask that stands for a secret's value, and the one rule for
control characters. Every module that names one of these imports it from here, so a concept has one
spelling and one definition.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Final


class Table(StrEnum):
    """The three MySQL tables of hosted mail (``reconciler/sql/mysql.sql``), in dependency order."""

    DOMAINS = "virtual_domains"
    USERS = "virtual_users"
    ALIASES = "virtual_aliases"


# (user count, XOR digest of the users, alias count, XOR digest of the aliases) of one domain: what
# the triggers keep in reconciler_digest and what the desired stage computes from a domain file.
Digest = tuple[int, int, int, int]

# What every output shows instead of a secret's value: diffs, logs, status answers, the page.
MASK: Final = "********"

# A secret's name: what ``${secret:NAME}`` may reference and what names a file in [secrets].dir.
SECRET_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
# The placeholder, as text and as bytes. It captures anything up to the closing brace, so that a
# malformed name is reported (``SECRET_NAME`` decides) rather than silently left in a file.
SECRET_REF: Final = re.compile(r"\$\{secret:([^}]*)\}")
SECRET_REF_BYTES: Final = re.compile(rb"\$\{secret:([^}]*)\}")

# Control characters: C0 controls, DEL, C1 controls, the Unicode line and paragraph separators and
# the byte-order mark. None may appear in a name, an address or a message shown to a person; a
# file's text may also hold tab and newline (``CONTROL_IN_TEXT``).
_CONTROL_CLASS = "\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff"
CONTROL: Final = re.compile(f"[{_CONTROL_CLASS}]")
CONTROL_IN_TEXT: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")
