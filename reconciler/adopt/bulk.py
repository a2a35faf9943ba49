"""The fast path of an import's rows: whole tables as text, checked and made domain files per domain.

Called by ``reconciler.adopt.domains.collect_rows``: ``users_ok`` / ``aliases_ok`` check each chunk
of the ``mariadb`` client's output while it is still being read (``reconciler.adopt.rows.read_lines``:
``domain_id<TAB>email<TAB>password`` and ``domain_id<TAB>source<TAB>destination`` lines, no row
ids), then ``domain_texts`` makes the domain files. Instead of a Python step per row, one regular
expression checks a whole chunk, one sort of all lines groups them by domain and orders them within
it, and each domain costs a few C-level passes over its text (``str.count``, ``str.replace``).

It covers the rows a mail server usually holds: lower-case ASCII addresses in their domain, hashes
without quotes or backslashes, no address twice. With those, byte order is the order
``domains.domain_yaml`` sorts in and its quoting is constant, so the texts are the same byte for
byte (tests/test_import.py compares both on the same rows). Anything else, a problem included,
gives False or None and the caller takes the row-by-row path, which says what is wrong with which row.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping

from reconciler import models
from reconciler.models import domain_problem

SCHEMA_MODELINE = "# yaml-language-server: $schema=../schemas/domain.schema.json\n"  # a domain file's first line
# Domain file texts by domain, and (domains, mailboxes, aliases): as domains.collect_rows returns them.
Texts = tuple[Mapping[str, str], tuple[int, int, int]]

# A local part that is a dot-string (models.LOCAL_PART_RE) and starts a plain address (printed
# bare), lower case so that byte order is casefold order; at most 64 characters (the look-ahead may
# run past a newline: the local part itself cannot, so it is exact).
_LOCAL = r"(?=[^@]{1,64}+@)[a-z0-9][a-z0-9_+=-]*+(?:\.[a-z0-9_+=-]++)*+"
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = rf"(?:{_LABEL}\.)+{_LABEL}"  # models.domain_problem's rule, lower case
# Every password models.password_ok accepts (its expression, embedded), but that a {SCHEME} hash's
# body is any text up to the newline: that it is visible ASCII is checked for the whole chunk at
# once (``_VISIBLE``, and the tab count), which costs a fifth of checking it character by character.
_ANY_HASH, _ANY_HASH_HERE = r"\}[!-~]+|", r"\}[^\n]++|"  # tests/test_import.py: the replace happens
_PASSWORD = "(?:" + models.PASSWORD_OK_RE.pattern.removesuffix(r"\Z").replace(_ANY_HASH, _ANY_HASH_HERE) + ")"
_VISIBLE = bytes(range(0x21, 0x7F)) + b"\t\n"  # what a chunk may hold: visible ASCII, tabs, newlines
# The limits (an address at most 254 characters, a password at most 255), checked only for a chunk
# with a line longer than 254: in a shorter line no field can be longer. The first address's domain
# part is any domain-shaped text here; that it is the row's domain is counted per domain
# (``_in_domain``).
_LONG_ADDRESS, _LONG_LINE, _LONG_PASSWORD = r"(?=[^\t\n]{1,254}\t)", r"(?=[^\n]{1,254}\n)", r"(?=[!-~]{1,255}\n)"


def _rows(long: bool) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """The users and aliases expressions: a chunk of whole lines, each a row the fast path covers."""
    first = r"[0-9]++\t" + (_LONG_ADDRESS if long else "")
    user = rf"{first}{_LOCAL}@[a-z0-9.-]++\t{_LONG_PASSWORD if long else ''}{_PASSWORD}\n"
    destination = rf"{_LONG_LINE if long else ''}{_LOCAL}@{_DOMAIN}\n"
    alias = rf"{first}(?:{_LOCAL})?@[a-z0-9.-]++\t{destination}"  # catch-all sources too
    return re.compile(rf"(?:{user})*+"), re.compile(rf"(?:{alias})*+")


_SHORT_ROWS, _LONG_ROWS = _rows(long=False), _rows(long=True)
_SHORT = 254
_DUPLICATE = re.compile(r"\n([^\t]++\t[^\t]++\t)[^\n]*+\n\1")  # the same id and address twice, once sorted
_SAME_LINE = re.compile(r"(?:^|\n)([^\n]++)\n\1(?:\n|\Z)")  # the same alias twice, once sorted
_NEXT_MAILBOX, _PASSWORD_KEY = '"\n  - address: ', '\n    password: "'
_NEXT_ALIAS, _DESTINATION_KEY = "\n  - source: ", "\n    destination: "


def users_ok(chunk: str, lines: list[str]) -> bool:
    """Whether every line of ``chunk`` (whole users lines, and split) is a mailbox row the fast path covers.

    If so, sorts ``lines`` in place: done while the client sends the next chunk, it leaves the
    sort of all lines (``domain_texts``) sorted runs to merge.
    """
    return _chunk_ok(chunk, lines, 0)


def aliases_ok(chunk: str, lines: list[str]) -> bool:
    """Whether every line of ``chunk`` (whole aliases lines, and split) is an alias row the fast path covers.

    If so, sorts ``lines`` in place, as ``users_ok`` does.
    """
    return _chunk_ok(chunk, lines, 1)


def _chunk_ok(chunk: str, lines: list[str], table: int) -> bool:
    if '"' in chunk or "\\" in chunk or not chunk.isascii():
        return False  # quoted as a JSON string, a backslash, or not ASCII
    if chunk.count("\t") != 2 * len(lines) or chunk.encode().translate(None, _VISIBLE):
        return False  # a tab in a value (each line has two at least), a control character or a space
    short = max(map(len, lines), default=0) <= _SHORT
    if (_SHORT_ROWS if short else _LONG_ROWS)[table].fullmatch(chunk) is None:
        return False
    lines.sort()
    return True


class NotCovered(Exception):
    """A domain's rows need the row-by-row path, found when its text was made (``Lazy``)."""


def domain_texts(
    domain_rows: list[tuple[str, str]], users: list[str], aliases: list[str], emails_unique: bool = False
) -> Texts | None:
    """Domain file texts by domain and the counts, from lines ``users_ok``/``aliases_ok`` accepted.

    None when a row needs the row-by-row path: an invalid domain name, a row of a domain id that does
    not exist. The rest is checked per domain as its text is made (``Lazy``), so that the import
    writes one file while the next is made: an address outside its domain, a mailbox address twice
    (not looked for when the database keeps emails unique: ``emails_unique``), an alias twice
    raise ``NotCovered`` then. Sorts both lists in place (the texts are made from them).
    """
    names = dict(domain_rows)
    if any(domain_problem(name) for name in names.values()):
        return None
    users.sort()  # grouped by domain id, then ordered by address within it
    aliases.sort()
    runs: dict[str, tuple[str, slice, slice]] = {}
    seen_users = seen_aliases = 0
    for ident, name in names.items():
        user_run, alias_run = _run(users, ident), _run(aliases, ident)
        runs[name] = (ident, user_run, alias_run)
        seen_users += user_run.stop - user_run.start
        seen_aliases += alias_run.stop - alias_run.start
    if seen_users != len(users) or seen_aliases != len(aliases):
        return None  # rows of a domain id that does not exist
    return Lazy(users, aliases, runs, emails_unique), (len(names), seen_users, seen_aliases)


class Lazy(Mapping[str, str]):
    """Domain file texts by domain (in-memory, during an import), each made and checked when read.

    Reading one whose rows the fast path does not cover raises ``NotCovered``.
    """

    def __init__(
        self, users: list[str], aliases: list[str], runs: dict[str, tuple[str, slice, slice]], emails_unique: bool
    ) -> None:
        self._users, self._aliases, self._runs, self._emails_unique = users, aliases, runs, emails_unique

    def __getitem__(self, domain: str) -> str:
        ident, user_run, alias_run = self._runs[domain]
        users, aliases = "\n".join(self._users[user_run]), "\n".join(self._aliases[alias_run])
        n_users, n_aliases = user_run.stop - user_run.start, alias_run.stop - alias_run.start
        if (
            not _in_domain(users, domain, n_users)
            or not _in_domain(aliases, domain, n_aliases)
            or (n_users > 1 and not self._emails_unique and _DUPLICATE.search("\n" + users))
            or (n_aliases > 1 and _SAME_LINE.search(aliases))
        ):
            raise NotCovered(domain)
        return _yaml(domain, ident, users, aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._runs)

    def __len__(self) -> int:
        return len(self._runs)


def _run(lines: list[str], ident: str) -> slice:
    """Where the sorted lines of domain ``ident`` are."""
    lo = bisect_left(lines, ident + "\t")
    return slice(lo, bisect_left(lines, ident + "\n", lo))  # "\n" sorts right after "\t": the end of the run


def _in_domain(block: str, domain: str, rows: int) -> bool:
    """Whether each row's first address (one ``@`` and one tab after it, as checked) is in ``domain``."""
    return block.count(f"@{domain}\t") == rows


def _yaml(domain: str, ident: str, users: str, aliases: str) -> str:
    """``domains.domain_yaml``'s text, from the blocks of one domain."""
    prefix = ident + "\t"
    parts = [SCHEMA_MODELINE, f"domain: {domain}\n"]
    if users:
        body = users[len(prefix) :].replace("\n" + prefix, _NEXT_MAILBOX).replace("\t", _PASSWORD_KEY)
        parts += ["mailboxes:\n  - address: ", body, '"\n']
    else:
        parts.append("mailboxes: []\n")
    if aliases:
        body = aliases[len(prefix) :].replace("\n" + prefix, _NEXT_ALIAS).replace("\t", _DESTINATION_KEY)
        body = f"  - source: {body}\n".replace(f"  - source: @{domain}\n", f'  - source: "@{domain}"\n')
        parts += ["aliases:\n", body]
    else:
        parts.append("aliases: []\n")
    return "".join(parts)
