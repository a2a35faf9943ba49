"""The plan stage's types: what ``plan`` reads (Desired, Observed) and what it returns (Plan).

Pure data, in-memory. The desired stage builds ``Desired`` (``reconciler.desired.render``), the
observer ``Observed``; ``plan.compute`` compares them; ``render`` shows a Plan and ``apply``
executes it as is. Secret values travel inside ``FileSpec.content`` and ``FileChange.content``
(needed to write the file) but never into a rendering.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property

from reconciler.rows import DomainRows
from reconciler.tables import TableDecl
from reconciler.vocab import Digest, Table

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
class LiveFile:
    """A file as found in the config directory."""

    content: bytes = field(repr=False)
    mode: int
    group: str


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
