"""The desired stage's types: the repository's layout constants and a revision as parsed.

Pure data. ``ParsedRevision`` is what a revision's files say (templates, domain digests, fleet
hosts), built by ``desired.build``; ``desired.render`` turns it into the plan's ``Desired``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from reconciler.errors import Problem
from reconciler.models import DomainFile
from reconciler.rows import DomainRows, Pair
from reconciler.tables import TableDecl
from reconciler.vocab import Digest

MAX_FILE_SIZE = 64 * 1024 * 1024
MAX_PROBLEMS_PER_FILE = 1000
POSTFIX_DIR = "postfix/"
DOMAINS_DIR = "domains/"
ROOTFS_DIR = "rootfs/"
MAX_DEPTH = 6  # postfix/a/b/c/d/FILE: deeper trees are a mistake, not a layout
HOSTS_DIR = "hosts/"
REQUIRED_POSTFIX_FILES = ("main.cf", "master.cf")


def repo_path(name: str) -> str:
    """The repo path of a managed file's name: ``postfix/NAME``, or ``rootfs/ABS`` for an outside table."""
    return ROOTFS_DIR + name[1:] if name.startswith("/") else POSTFIX_DIR + name


@dataclass(frozen=True)
class DesiredFile:
    """A file of ``postfix/`` (or an allowed ``rootfs/`` table) as the repo holds it: a template.

    ``name`` is relative to the config directory (``sql/mysql-x.cf``), or the absolute live path of
    an outside table (``/etc/aliases``).
    """

    name: str
    blob_id: str
    template: bytes
    secrets: frozenset[str]


@dataclass(frozen=True)
class DomainData:
    """A hosted domain as the revision declares it (in-memory): digest now, rows on demand."""

    name: str
    path: str
    blob_id: str
    digest: Digest
    alias_keys: tuple[Pair, ...]  # case-folded (source, destination), in file order
    load: Callable[[], tuple[tuple[Pair, ...], tuple[Pair, ...]]] = field(repr=False, compare=False)


@dataclass(frozen=True)
class HostSpec:
    """One fleet host as the revision's ``hosts/<name>.yaml`` declares it (in-memory)."""

    name: str
    path: str
    wave: int
    main_cf: Mapping[str, str]
    files: Mapping[str, DesiredFile]  # its hosts/<name>/postfix/ files, by name inside postfix/


@dataclass(frozen=True)
class ParsedRevision:
    """Everything a revision asks for (in-memory, immutable).

    ``files`` are those of ``host`` when one was asked for and the revision has its host file,
    else the shared ``postfix/`` tree; ``shared_files`` is always that shared tree.
    """

    revision: str | None
    files: Mapping[str, DesiredFile]
    domains: Mapping[str, DomainData]
    # Findings that are not problems: rootfs/ files this host does not allow (left alone).
    notes: tuple[Problem, ...] = ()
    hosts: Mapping[str, HostSpec] = field(default_factory=dict)
    host: HostSpec | None = None
    shared_files: Mapping[str, DesiredFile] = field(default_factory=dict)


@dataclass(frozen=True)
class ParsedDomain:
    """The outcome of parsing one domain file (in-memory; cacheable by blob id)."""

    model: DomainFile | None
    problems: tuple[Problem, ...]


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
class Desired:
    """The desired state: everything ``plan`` needs of the revision, rendered for this host (in-memory).

    Built once, by ``desired.render``, and handed down: ``observe`` and ``plan`` only read it.
    """

    revision: str | None
    files: Mapping[str, FileSpec]
    tables: tuple[TableDecl, ...]
    domains: Mapping[str, DomainRows]
    host: str = ""  # the fleet host whose files these are ("" outside a fleet)
