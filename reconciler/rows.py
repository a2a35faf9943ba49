"""The rows of hosted domains as every stage holds them: ``DomainRows`` and the per-domain digest.

Pure, low layer. The desired stage builds ``DomainRows`` from domain files (rows loaded only when
needed), the observer from MySQL; ``plan`` compares them. ``rows_digest`` is the digest the
triggers of ``reconciler/sql/mysql.sql`` keep in ``reconciler_digest`` (and ``db.DIGEST_JOINS``
computes in SQL), so an unchanged domain is recognised without reading its rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

from reconciler.vocab import Digest

Pair = tuple[str, str]


def rows_digest(users: Iterable[Pair], aliases: Iterable[Pair]) -> Digest:
    """(user count, XOR of MD5s, alias count, XOR of MD5s) of a domain's rows.

    Order-independent, and the same as ``observed`` computes in SQL over ``email\0password`` and
    ``source\0destination``, so an unchanged domain is recognised without reading its rows.
    """
    n_users = n_aliases = 0
    x_users = x_aliases = 0
    for email, password in users:
        n_users += 1
        x_users ^= _md5_64(f"{email}\0{password}")
    for source, destination in aliases:
        n_aliases += 1
        x_aliases ^= _md5_64(f"{source}\0{destination}")
    return n_users, x_users, n_aliases, x_aliases


def _md5_64(text: str) -> int:
    return int.from_bytes(hashlib.md5(text.encode("utf-8"), usedforsecurity=False).digest()[:8], "big")


UserRows = Mapping[str, tuple[str, str]]  # lower-cased address -> (email, password)
AliasRows = Mapping[tuple[str, str], tuple[str, str]]  # lower-cased pair -> (source, destination)


class DomainRows:
    """The rows of one domain: mailboxes by lower-cased address, aliases by lower-cased pair.

    Immutable. Built either from the rows themselves, or from a known digest and a loader that is
    called only if the rows are needed (a domain that differs from the database).
    """

    __slots__ = ("_aliases", "_digest", "_load", "_users")

    def __init__(
        self,
        users: UserRows | None = None,
        aliases: AliasRows | None = None,
        *,
        digest: Digest | None = None,
        load: Callable[[], tuple[UserRows, AliasRows]] | None = None,
    ) -> None:
        self._users = users
        self._aliases = aliases
        self._digest = digest
        self._load = load

    def _rows(self) -> tuple[UserRows, AliasRows]:
        if self._users is None or self._aliases is None:
            assert self._load is not None  # noqa: S101 - constructed with rows or with a loader
            self._users, self._aliases = self._load()
        return self._users, self._aliases

    @property
    def users(self) -> UserRows:
        return self._rows()[0]

    @property
    def aliases(self) -> AliasRows:
        return self._rows()[1]

    def digest(self) -> Digest:
        """(user count, XOR digest, alias count, XOR digest), the same as ``observed`` computes in SQL."""
        if self._digest is None:
            self._digest = rows_digest(self.users.values(), self.aliases.values())
        return self._digest

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DomainRows):
            return NotImplemented
        return dict(self.users) == dict(other.users) and dict(self.aliases) == dict(other.aliases)

    def __hash__(self) -> int:
        return hash(self.digest())

    def __repr__(self) -> str:
        return f"DomainRows(users={len(self.users)}, aliases={len(self.aliases)})"
