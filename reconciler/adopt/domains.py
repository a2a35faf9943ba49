"""The mail rows of an import as domain files: each row checked, then ``domains/<domain>.yaml`` texts.

Called by ``import_host`` (``reconciler.adopt``), and by tests that load a generated file back.
Rows come from ``reconciler.adopt.rows``; a row the repository cannot represent (a plaintext
password, an address outside its domain, a domain id that does not exist) is a ``Problem`` naming
the row. The texts are stable (the modeline, then mailboxes and aliases in a fixed order), so that a
re-import of an unchanged host gives byte-identical files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import structlog

from reconciler.adopt import bulk
from reconciler.adopt.bulk import SCHEMA_MODELINE
from reconciler.adopt.rows import LineReader, client_program, read_tables
from reconciler.errors import Problem
from reconciler.models import (
    LOCAL_PART_RE,
    AgentConfig,
    DomainFile,
    address_problem,
    domain_problem,
    password_ok,
    password_problem,
)
from reconciler.vocab import Table

log = structlog.get_logger("reconciler.adopt")
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=-]*@[A-Za-z0-9.-]+\Z")
# (domains, mailboxes, aliases) an import wrote.
Counts = tuple[int, int, int]


def start_reading(cfg: AgentConfig) -> LineReader | None:
    """The fast path's reader, started (None without the client: then ``collect_rows`` reads row by row)."""
    client = client_program(cfg)
    return LineReader(cfg, client) if client is not None else None


def collect_rows(cfg: AgentConfig, reader: LineReader | None) -> tuple[Mapping[str, str], Counts, list[Problem]]:
    """Domain file texts by domain, (domains, mailboxes, aliases) and the rows that cannot be represented.

    Through the fast path (``reconciler.adopt.bulk``) when given the ``reader`` that
    ``start_reading`` started and every row is one it covers; else, or when it gives up, row by
    row: the same texts, and the problems named. The fast path's texts are checked as each is
    read: one that needs the row-by-row path raises ``bulk.NotCovered`` then, and the caller asks
    again without a reader.
    """
    if reader is not None:
        users, aliases = bulk.users(), bulk.aliases()
        lines = reader.lines(users.take, aliases.take)
        texts = None
        if lines is not None:
            texts = bulk.domain_texts(lines.domains, users, aliases, lines.emails_unique)
        if texts is not None:
            log.debug("import.rows", path="fast", mailboxes=texts[1][1])
            return texts[0], texts[1], []
    log.debug("import.rows", path="row by row")
    return texts_from_rows(*read_tables(cfg))


def texts_from_rows(
    domain_rows: list[tuple[str, str]],
    user_rows: list[tuple[str, str, str, str]],
    alias_rows: list[tuple[str, str, str, str]],
) -> tuple[dict[str, str], Counts, list[Problem]]:
    """``collect_rows`` row by row, from the rows as ``read_tables`` returns them: each problem named."""
    problems: list[Problem] = []
    names: dict[str, str] = dict(domain_rows)
    for ident, name in sorted(names.items(), key=lambda item: int(item[0])):
        bad = domain_problem(name)
        if bad:
            problems.append(Problem(f"{Table.DOMAINS} id={ident}", None, f"name {name!r}: {bad}"))
    users = _check_users(names, user_rows, problems)
    aliases = _check_aliases(names, alias_rows, problems)
    texts = {names[i]: domain_yaml(names[i], users[i], aliases[i]) for i in names}
    counts = (len(names), sum(len(u) for u in users.values()), sum(len(a) for a in aliases.values()))
    return texts, counts, problems


def _check_users(
    names: dict[str, str], user_rows: list[tuple[str, str, str, str]], problems: list[Problem]
) -> dict[str, list[tuple[str, str]]]:
    """(email, password) by domain id of the users that can be represented; the others into ``problems``."""
    users: dict[str, list[tuple[str, str]]] = {i: [] for i in names}
    first: dict[str, str] = {}  # row id by casefolded address: a domain file holds each mailbox once
    for ident, domain_id, email, password in user_rows:
        key = email.casefold()
        if key in first:
            same = f"the same mailbox as {Table.USERS} id={first[key]}"
            problems.append(Problem(f"{Table.USERS} id={ident}", None, f"{email!r}: {same}"))
            continue
        first[key] = ident
        domain = names.get(domain_id)
        if domain is not None and _address_in(email, domain) is None and password_ok(password):
            users[domain_id].append((email, password))  # the common case: nothing to report
            continue
        where = f"{Table.USERS} id={ident}"
        if domain is None:
            problems.append(Problem(where, None, f"{email!r}: domain_id {domain_id} does not exist"))
            continue
        bad = _address_in(email, domain)
        if bad:
            problems.append(Problem(where, None, f"{email!r}: {bad}"))
            continue
        if password_problem(password):
            problems.append(
                Problem(
                    where,
                    None,
                    f"{email}: the password is not a hash (plaintext or an unknown scheme); "
                    "rehash it (reconciler passwd) before importing",
                )
            )
            continue
        users[domain_id].append((email, password))
    return users


def _check_aliases(
    names: dict[str, str], alias_rows: list[tuple[str, str, str, str]], problems: list[Problem]
) -> dict[str, list[tuple[str, str]]]:
    """(source, destination) by domain id of the aliases that can be represented; the others into ``problems``."""
    aliases: dict[str, list[tuple[str, str]]] = {i: [] for i in names}
    valid_domains: dict[str, bool] = {}  # destination domains checked once each
    first: dict[tuple[str, str], str] = {}  # row id by casefolded pair: a domain file holds each alias once
    for ident, domain_id, source, destination in alias_rows:
        where = f"{Table.ALIASES} id={ident}"
        pair = (source.casefold(), destination.casefold())
        if pair in first:
            problems.append(
                Problem(
                    where, None, f"{source!r} -> {destination!r}: the same alias as {Table.ALIASES} id={first[pair]}"
                )
            )
            continue
        first[pair] = ident
        domain = names.get(domain_id)
        if domain is None:
            problems.append(
                Problem(where, None, f"{source!r} -> {destination!r}: domain_id {domain_id} does not exist")
            )
            continue
        bad = _address_in(source, domain, catch_all=True)
        if bad is not None and bad.startswith("not in its domain"):
            bad = "source " + bad
        if bad is None:
            part = destination.rpartition("@")[2]
            if part not in valid_domains:
                valid_domains[part] = domain_problem(part) is None
            dest_bad = _address_in(destination, part) if valid_domains[part] else address_problem(destination)
            bad = f"destination {dest_bad} (one row per destination)" if dest_bad else None
        if bad:
            problems.append(Problem(where, None, f"{source!r} -> {destination!r}: {bad}"))
            continue
        aliases[domain_id].append((source, destination))
    return aliases


def _address_in(address: str, domain: str, *, catch_all: bool = False) -> str | None:
    """Why ``address`` cannot be a row of ``domain`` (an already valid domain name), else None.

    The common case costs one split and one regex match; anything unusual gets the full check.
    """
    local, at, part = address.rpartition("@")
    if at and part == domain and len(address) <= 254 and len(local) <= 64 and local and LOCAL_PART_RE.match(local):
        return None
    bad = address_problem(address, allow_catch_all=catch_all)
    if bad is None and part.lower() != domain:
        bad = f"not in its domain {domain}"
    return bad


def _quoted(value: str) -> str:
    """A YAML double-quoted scalar (ASCII: addresses and hashes are); JSON's escapes are YAML's."""
    return f'"{value}"' if '"' not in value and "\\" not in value else json.dumps(value)


def _address(value: str) -> str:
    return value if _PLAIN_ADDRESS.match(value) else _quoted(value)


def domain_yaml(domain: str, users: list[tuple[str, str]], aliases: list[tuple[str, str]]) -> str:
    """A domain file's text: the modeline, then mailboxes and aliases in a stable order."""
    parts = [SCHEMA_MODELINE, f"domain: {domain}\n"]
    if users:
        parts.append("mailboxes:\n")
        users = sorted(users, key=lambda u: (u[0].casefold(), u[0]))
        parts += [f"  - address: {_address(e)}\n    password: {_quoted(p)}\n" for e, p in users]
    else:
        parts.append("mailboxes: []\n")
    if aliases:
        parts.append("aliases:\n")
        aliases = sorted(aliases, key=lambda a: (a[0].casefold(), a[1].casefold(), a))
        parts += [f"  - source: {_address(s)}\n    destination: {_address(d)}\n" for s, d in aliases]
    else:
        parts.append("aliases: []\n")
    return "".join(parts)


def domain_schema() -> str:
    """``schemas/domain.schema.json``: the domain file's JSON schema, which the modeline points at."""
    schema = DomainFile.model_json_schema(mode="validation")
    return json.dumps({"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}, indent=2) + "\n"
