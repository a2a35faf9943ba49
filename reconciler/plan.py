"""The plan stage: a pure function from desired and observed state to an ordered, typed Plan.

``plan(desired, observed)`` does no I/O. The Plan is a frozen tuple of changes (files, built
tables, rows, then the service action) that ``diff`` renders as text or JSON and ``apply``
executes as is: nothing is recomputed between showing and doing. Secret values travel inside
``FileChange.content`` (needed to write the file) but never into a rendering: file diffs are made
on templates, and a rotated secret shows as "secret NAME changed".
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any

from reconciler.cfparse import diff_parameters, parse_main_cf, parse_master_cf
from reconciler.desired import DomainData, rows_digest
from reconciler.tables import TableDecl
from reconciler.vocab import SECRET_REF_BYTES, Digest, Table

RESTART_PARAMETERS = ("inet_interfaces", "inet_protocols")


class Kind(StrEnum):
    """What a change touches."""

    FILE = "file"
    TABLE = "table"
    ROW = "row"
    SERVICE = "service"


class Action(StrEnum):
    """What a change does."""

    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"
    REBUILD = "rebuild"
    RELOAD = "reload"
    RESTART = "restart"
    NONE = "none"


# ------------------------------------------------------------------------------------------------
# Inputs


@dataclass(frozen=True)
class FileSpec:
    """A managed file as it must be live: rendered content (secrets substituted), mode, group."""

    name: str
    template: bytes
    content: bytes = field(repr=False)
    secrets: frozenset[str] = frozenset()
    mode: int = 0o644
    group: str = "root"
    origin: str = ""  # on a fleet host, what makes this file host-specific ("" when shared)


@dataclass(frozen=True)
class LiveFile:
    """A file as found in the config directory."""

    content: bytes = field(repr=False)
    mode: int
    group: str


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


@dataclass(frozen=True)
class Desired:
    """Everything ``plan`` needs of the revision (in-memory)."""

    revision: str | None
    files: Mapping[str, FileSpec]
    tables: tuple[TableDecl, ...]
    domains: Mapping[str, DomainRows]
    host: str = ""  # the fleet host whose files these are ("" outside a fleet)


@dataclass(frozen=True)
class Observed:
    """Everything ``plan`` needs of the live host (in-memory).

    ``domains`` holds full rows only for domains whose digest differs from the desired one (the
    observer compares digests in SQL first); ``unchanged_domains`` lists those that matched.
    """

    files: Mapping[str, LiveFile]
    managed_files: frozenset[str]
    managed_tables: tuple[TableDecl, ...]
    stale_tables: frozenset[str]  # names whose built file is missing or older than its source
    domains: Mapping[str, DomainRows]
    unchanged_domains: frozenset[str]
    postfix_running: bool
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    row_count: int = 0  # rows of the three tables, all domains: the base of the deletion guard
    stale_digests: bool = False  # reconciler_digest disagrees with the rows: apply repairs it first


# ------------------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class FileChange:
    """Create, update or delete one file of the config directory."""

    action: Action
    name: str
    content: bytes | None = field(repr=False)  # None for delete
    mode: int
    group: str
    diff: str  # unified diff of templates, secrets masked
    secrets_changed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    kind: Kind = Kind.FILE
    holds_secret: bool = False
    content_changed: bool = True  # False for a mode or group change only

    @property
    def target(self) -> str:
        return self.name


@dataclass(frozen=True)
class TableChange:
    """Rebuild a table from its (new) source, or delete a built table whose source is gone."""

    action: Action
    table: TableDecl
    reason: str
    kind: Kind = Kind.TABLE

    @property
    def target(self) -> str:
        return f"{self.table.type}:{self.table.name}"


@dataclass(frozen=True)
class RowChange:
    """Insert, update or delete one row, keyed by its natural key."""

    action: Action
    table: Table
    key: str
    domain: str
    before: Mapping[str, str] | None = field(repr=False)
    after: Mapping[str, str] | None = field(repr=False)
    kind: Kind = Kind.ROW

    @property
    def target(self) -> str:
        return f"{self.table}/{self.key}"


@dataclass(frozen=True)
class ServiceChange:
    """What Postfix must do to take the change: nothing, reload or restart, and why."""

    action: Action
    reason: str
    kind: Kind = Kind.SERVICE

    @property
    def target(self) -> str:
        return "postfix"


Change = FileChange | TableChange | RowChange | ServiceChange


@dataclass(frozen=True)
class Plan:
    """The ordered changes of one reconcile (in-memory, immutable); empty means in sync."""

    revision: str | None
    changes: tuple[Change, ...]
    service: ServiceChange
    main_cf_params: tuple[tuple[str, str | None, str | None], ...] = ()
    master_cf_services: tuple[tuple[str, str | None, str | None], ...] = ()
    managed_files: frozenset[str] = frozenset()
    managed_tables: tuple[TableDecl, ...] = ()
    # Per-domain digests the rows of every domain with row changes have once the plan ran (what the
    # triggers would leave in reconciler_digest): a bulk apply writes them instead of re-hashing.
    row_digests: Mapping[str, Digest] = field(default_factory=dict, repr=False)
    host: str = ""  # the fleet host planned for ("" outside a fleet)

    @property
    def empty(self) -> bool:
        return not any(c.kind is not Kind.SERVICE for c in self.changes)

    # Computed once: a plan at a million mailboxes holds a million changes, and the applier asks often.
    @cached_property
    def files(self) -> list[FileChange]:
        return [c for c in self.changes if isinstance(c, FileChange)]

    @cached_property
    def tables(self) -> list[TableChange]:
        return [c for c in self.changes if isinstance(c, TableChange)]

    @cached_property
    def rows(self) -> list[RowChange]:
        return [c for c in self.changes if isinstance(c, RowChange)]


def plan(desired: Desired, observed: Observed) -> Plan:
    """The changes that turn ``observed`` into ``desired``, in execution order."""
    file_changes = _file_changes(desired, observed)
    table_changes = _table_changes(desired, observed, file_changes)
    row_changes, row_digests = _row_changes(desired, observed)
    main_params = _param_diff(desired, observed, "main.cf", parse_main_cf)
    master_services = _param_diff(desired, observed, "master.cf", parse_master_cf)
    service = _service_action(file_changes, table_changes, main_params, observed.postfix_running)
    changes: list[Change] = [*file_changes, *table_changes, *row_changes]
    if service.action is not Action.NONE:
        changes.append(service)
    return Plan(
        revision=desired.revision,
        changes=tuple(changes),
        service=service,
        main_cf_params=tuple(main_params),
        master_cf_services=tuple(master_services),
        managed_files=frozenset(desired.files),
        managed_tables=desired.tables,
        row_digests=row_digests,
        host=desired.host,
    )


def _file_changes(desired: Desired, observed: Observed) -> list[FileChange]:
    out: list[FileChange] = []
    for name in sorted(desired.files):
        spec = desired.files[name]
        live = observed.files.get(name)
        holds_secret = bool(spec.secrets)
        if live is None:
            diff = unified(b"", spec.template, name)
            origin = (f"host-specific: {spec.origin}",) if spec.origin else ()
            out.append(
                FileChange(
                    Action.CREATE,
                    name,
                    spec.content,
                    spec.mode,
                    spec.group,
                    diff,
                    (),
                    origin,
                    holds_secret=holds_secret,
                )
            )
            continue
        notes: list[str] = []
        if (live.mode & 0o7777) != spec.mode:
            notes.append(f"mode {live.mode & 0o7777:04o} -> {spec.mode:04o}")
        if live.group != spec.group:
            notes.append(f"group {live.group} -> {spec.group}")
        if live.content == spec.content and not notes:
            continue
        if spec.origin:
            notes.append(f"host-specific: {spec.origin}")
        diff, rotated = "", tuple[str, ...]()
        if live.content != spec.content:
            masked, rotated = mask_live(spec.template, live.content, observed.secrets, secret_file=_private(live))
            diff = unified(masked, spec.template, name)
        out.append(
            FileChange(
                Action.UPDATE,
                name,
                spec.content,
                spec.mode,
                spec.group,
                diff,
                rotated,
                tuple(notes),
                holds_secret=holds_secret,
                content_changed=live.content != spec.content,
            )
        )
    for name in sorted(observed.managed_files - set(desired.files)):
        live = observed.files.get(name)
        if live is None:
            continue
        masked, _ = mask_live(b"", live.content, observed.secrets, secret_file=_private(live))
        out.append(FileChange(Action.DELETE, name, None, 0, "", unified(masked, b"", name)))
    return out


def _table_changes(desired: Desired, observed: Observed, files: list[FileChange]) -> list[TableChange]:
    out: list[TableChange] = []
    changed = {f.name: f for f in files}
    for table in desired.tables:
        if table.name in changed:
            # A mode or group change of the source is rebuilt too: the table inherits them.
            reason = "source changed" if _content_changed(changed[table.name]) else "source mode or group changed"
            out.append(TableChange(Action.REBUILD, table, reason))
        elif table.name in observed.stale_tables:
            out.append(TableChange(Action.REBUILD, table, "built table missing or older than its source"))
        elif table not in observed.managed_tables and observed.managed_files:
            out.append(TableChange(Action.REBUILD, table, "table type or builder changed"))
    wanted = {(t.name, t.type) for t in desired.tables}
    for table in observed.managed_tables:
        if (table.name, table.type) not in wanted and table.built_suffixes != _suffixes_of(desired, table.name):
            out.append(
                TableChange(
                    Action.DELETE, table, "no longer referenced" if table.name in desired.files else "source removed"
                )
            )
    return out


def _suffixes_of(desired: Desired, name: str) -> tuple[str, ...] | None:
    for t in desired.tables:
        if t.name == name:
            return t.built_suffixes
    return None


def _row_changes(desired: Desired, observed: Observed) -> tuple[list[RowChange], dict[str, Digest]]:
    digests: dict[str, Digest] = {}
    creates: list[RowChange] = []
    middle: list[RowChange] = []
    deletes: list[RowChange] = []
    # Domain names compare case-insensitively, as the UNIQUE key of virtual_domains does: a live
    # "Example.ORG" is renamed in place, never re-created beside itself.
    wanted = {n.casefold(): n for n in desired.domains}
    live = {n.casefold(): n for n in observed.domains}
    unchanged = {n.casefold() for n in observed.unchanged_domains}
    empty = DomainRows({}, {})
    for key in sorted((set(wanted) | set(live)) - unchanged):
        name = wanted.get(key) or live[key]
        want = desired.domains.get(name) if key in wanted else None
        have = observed.domains.get(live[key]) if key in live else None
        if want is not None and have is None:
            creates.append(RowChange(Action.CREATE, Table.DOMAINS, name, name, None, {"name": name}))
        elif want is not None and live[key] != name:
            creates.append(RowChange(Action.UPDATE, Table.DOMAINS, name, name, {"name": live[key]}, {"name": name}))
        w = want or empty
        h = have or empty
        if want is not None:
            digests[name] = want.digest()
        if have is None and want is not None:
            # A domain new to the database (every row of a cold apply): creates only, no matching.
            users, aliases = want.users, want.aliases
            for email in sorted(users):
                address, hashed = users[email]
                row = {"email": address, "password": hashed}
                middle.append(RowChange(Action.CREATE, Table.USERS, email, name, None, row))
            for pair in sorted(aliases):
                source, destination = aliases[pair]
                row = {"source": source, "destination": destination}
                middle.append(RowChange(Action.CREATE, Table.ALIASES, f"{pair[0]} -> {pair[1]}", name, None, row))
            continue
        for email in sorted(set(w.users) | set(h.users)):
            a, b = h.users.get(email), w.users.get(email)
            if a == b:
                continue
            before = {"email": a[0], "password": a[1]} if a else None
            after = {"email": b[0], "password": b[1]} if b else None
            action = Action.CREATE if a is None else Action.DELETE if b is None else Action.UPDATE
            middle.append(RowChange(action, Table.USERS, email, name, before, after))
        for pair in sorted(set(w.aliases) | set(h.aliases)):
            c, d = h.aliases.get(pair), w.aliases.get(pair)
            if c == d:
                continue
            before = {"source": c[0], "destination": c[1]} if c else None
            after = {"source": d[0], "destination": d[1]} if d else None
            action = Action.CREATE if c is None else Action.DELETE if d is None else Action.UPDATE
            middle.append(RowChange(action, Table.ALIASES, f"{pair[0]} -> {pair[1]}", name, before, after))
        if want is None and have is not None:
            deletes.append(RowChange(Action.DELETE, Table.DOMAINS, name, name, {"name": live[key]}, None))
    return [*creates, *middle, *deletes], digests


def _param_diff(
    desired: Desired, observed: Observed, name: str, parse: Any
) -> list[tuple[str, str | None, str | None]]:
    spec = desired.files.get(name)
    live = observed.files.get(name)
    if spec is None or live is None or live.content == spec.content:
        return []
    masked, _ = mask_live(spec.template, live.content, observed.secrets, secret_file=_private(live))
    return diff_parameters(parse(masked.decode("utf-8", "replace")), parse(spec.template.decode("utf-8", "replace")))


def _service_action(
    files: list[FileChange],
    tables: list[TableChange],
    main_params: list[tuple[str, str | None, str | None]],
    running: bool,
) -> ServiceChange:
    content = [f for f in files if _content_changed(f)]
    if not content and not [t for t in tables if t.reason != "source mode or group changed"]:
        if files:
            return ServiceChange(Action.NONE, "only modes or groups changed; Postfix reads the same content")
        return ServiceChange(Action.NONE, "no file or table changed")
    if not running:
        return ServiceChange(Action.NONE, "Postfix is not running; it is left stopped")
    restart = [n for n, _, _ in main_params if n in RESTART_PARAMETERS]
    if restart:
        return ServiceChange(Action.RESTART, f"{', '.join(restart)} changed: Postfix takes it only on a restart")
    if any(f.name == "main.cf" and f.action is Action.CREATE for f in files):
        return ServiceChange(Action.RESTART, "main.cf created: a restart reads every setting")
    what = ", ".join(sorted({f.name for f in content} | {t.table.name for t in tables}))
    return ServiceChange(Action.RELOAD, f"changed: {what}")


def _content_changed(change: FileChange) -> bool:
    return change.content_changed


# ------------------------------------------------------------------------------------------------
# Secret masking and rendering helpers (pure)



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


def _private(live: LiveFile) -> bool:
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


# ------------------------------------------------------------------------------------------------
# Building the plan's input from a validated revision (pure)

SECRET_FILE_MODE = 0o640
SECRET_FILE_GROUP = "postfix"  # noqa: S105 - a group name


def domain_rows(model: Any) -> DomainRows:
    """Rows of one ``DomainFile`` keyed by lower-cased natural key."""
    users = {m.address.casefold(): (m.address, m.password) for m in model.mailboxes}
    aliases = {(a.source.casefold(), a.destination.casefold()): (a.source, a.destination) for a in model.aliases}
    return DomainRows(users, aliases)


def lazy_domain_rows(data: DomainData) -> DomainRows:
    """Rows of a declared domain: its digest now, its rows (from the parse cache) only if needed."""

    def load() -> tuple[UserRows, AliasRows]:
        users, aliases = data.load()
        return {e.casefold(): (e, p) for e, p in users}, {(s.casefold(), d.casefold()): (s, d) for s, d in aliases}

    return DomainRows(digest=data.digest, load=load)


def render_file(template: bytes, secrets: Mapping[str, bytes]) -> bytes:
    """The template with every ``${secret:NAME}`` replaced by its value."""
    return SECRET_REF_BYTES.sub(lambda m: secrets[m.group(1).decode()], template)


def desired_from(
    revision: str | None,
    files: Mapping[str, Any],
    tables: Iterable[Any],
    domains: Mapping[str, DomainRows],
    secrets: Mapping[str, bytes],
    *,
    host: str = "",
    origins: Mapping[str, str] | None = None,
) -> Desired:
    """``Desired`` from validated ``DesiredFile``s, ``TableDecl``s and domain rows.

    ``origins`` says, per file name, what makes a fleet host's file host-specific.
    """
    specs = {}
    for name, f in files.items():
        holds = bool(f.secrets)
        specs[name] = FileSpec(
            name,
            f.template,
            render_file(f.template, secrets) if holds else f.template,
            frozenset(f.secrets),
            SECRET_FILE_MODE if holds else 0o644,
            SECRET_FILE_GROUP if holds else "root",
            (origins or {}).get(name, ""),
        )
    decls = tuple(t for t in tables if t.builder)
    return Desired(revision, specs, decls, domains, host)
