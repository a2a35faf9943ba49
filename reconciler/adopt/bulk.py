"""The fast path of an import's rows: whole tables as text, checked and made domain files per domain.

Called by ``reconciler.adopt.domains.collect_rows``: a ``Runs`` per table (``users()``,
``aliases()``) takes each chunk of the ``mariadb`` client's output while the next is still being
sent (``reconciler.adopt.rows.LineReader``: ``domain_id<TAB>email<TAB>password`` and
``domain_id<TAB>source<TAB>destination`` lines, no row ids), checks it, sorts it and files its
lines by domain id; then ``domain_texts`` makes the domain files, each when it is read. Instead of
a Python step per row, one regular expression checks a whole chunk, one sort a chunk, and each
domain costs a merge of its sorted runs and a few C-level passes over its text (``str.count``,
``str.replace``).

It covers the rows a mail server usually holds: lower-case ASCII addresses in their domain, hashes
without quotes or backslashes, no address twice. With those, byte order is the order
``domains.domain_yaml`` sorts in and its quoting is constant, so the texts are the same byte for
byte (tests/test_import.py compares both on the same rows). Anything else, a problem included,
gives False, None or ``NotCovered`` and the caller takes the row-by-row path, which says what is
wrong with which row.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from itertools import chain

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
# once (``_VISIBLE``, and the tab count), a fraction of the cost of checking it character by
# character in the expression.
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


class Runs:
    """One table's lines the fast path took (in-memory, during an import): sorted runs by domain id.

    ``take`` is handed each chunk of the client's output while the next one arrives
    (``reconciler.adopt.rows.LineReader.lines``); it checks the chunk, sorts it and files its lines by
    domain id, so that once the client is done each domain's lines are a few sorted runs to merge.
    """

    def __init__(self, table: int) -> None:
        self.table = table  # 0: users (domain_id, email, password), 1: aliases (domain_id, source, destination)
        self.runs: dict[str, list[list[str]]] = {}
        self.count = 0

    def take(self, chunk: str, lines: list[str]) -> bool:
        """Whether every line of ``chunk`` (whole lines, and split) is a row the fast path covers; if so, keep them."""
        if not _chunk_ok(chunk, lines, self.table):
            return False
        lines.sort()
        start, end = 0, len(lines)
        while start < end:
            ident = lines[start].partition("\t")[0]
            stop = bisect_left(lines, ident + "\n", start)  # "\n" sorts right after "\t": the end of the run
            self.runs.setdefault(ident, []).append(lines[start:stop])
            start = stop
        self.count += end
        return True

    def lines(self, ident: str) -> list[str]:
        """The lines of domain ``ident``, sorted (its runs merged)."""
        runs = self.runs.get(ident, [])
        if len(runs) == 1:
            return runs[0]
        merged = list(chain.from_iterable(runs))
        merged.sort()
        return merged


def users() -> Runs:
    """An empty ``Runs`` for virtual_users' lines."""
    return Runs(0)


def aliases() -> Runs:
    """An empty ``Runs`` for virtual_aliases' lines."""
    return Runs(1)


def _chunk_ok(chunk: str, lines: list[str], table: int) -> bool:
    if '"' in chunk or "\\" in chunk or not chunk.isascii():
        return False  # quoted as a JSON string, a backslash, or not ASCII
    if chunk.count("\t") != 2 * len(lines) or chunk.encode().translate(None, _VISIBLE):
        return False  # a tab in a value (each line has two at least), a control character or a space
    short = max(map(len, lines), default=0) <= _SHORT
    return (_SHORT_ROWS if short else _LONG_ROWS)[table].fullmatch(chunk) is not None


class NotCovered(Exception):
    """A domain's rows need the row-by-row path, found when its text was made (``Lazy``)."""


def domain_texts(
    domain_rows: list[tuple[str, str]], users: Runs, aliases: Runs, emails_unique: bool = False
) -> Texts | None:
    """Domain file texts by domain and the counts, from the lines ``Runs.take`` took.

    None when a row needs the row-by-row path: an invalid domain name, a row of a domain id that does
    not exist. The rest is checked per domain as its text is made (``Lazy``), so that the import
    holds one domain's text at a time: an address outside its domain, a mailbox address twice
    (not looked for when the database keeps emails unique: ``emails_unique``), an alias twice
    raise ``NotCovered`` then.
    """
    names = dict(domain_rows)
    if any(domain_problem(name) for name in names.values()):
        return None
    if not users.runs.keys() <= names.keys() or not aliases.runs.keys() <= names.keys():
        return None  # rows of a domain id that does not exist
    return Lazy(names, users, aliases, emails_unique), (len(names), users.count, aliases.count)


class Lazy(Mapping[str, str]):
    """Domain file texts by domain (in-memory, during an import), each made and checked when read.

    Reading one whose rows the fast path does not cover raises ``NotCovered``.
    """

    def __init__(self, names: dict[str, str], users: Runs, aliases: Runs, emails_unique: bool) -> None:
        self._idents = {name: ident for ident, name in names.items()}
        self._users, self._aliases, self._emails_unique = users, aliases, emails_unique

    def __getitem__(self, domain: str) -> str:
        ident = self._idents[domain]
        user_lines, alias_lines = self._users.lines(ident), self._aliases.lines(ident)
        users, aliases = "\n".join(user_lines), "\n".join(alias_lines)
        if (
            not _in_domain(users, domain, len(user_lines))
            or not _in_domain(aliases, domain, len(alias_lines))
            or (len(user_lines) > 1 and not self._emails_unique and _DUPLICATE.search("\n" + users))
            or (len(alias_lines) > 1 and _SAME_LINE.search(aliases))
        ):
            raise NotCovered(domain)
        return _yaml(domain, ident, users, aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self._idents)

    def __len__(self) -> int:
        return len(self._idents)


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
