"""Building a ``ParsedRevision`` from a Snapshot: every file read and checked, every problem collected.

Pure apart from reading blobs (and the parse cache). Checks everything that needs no Postfix: the
repository's shape (regular UTF-8 files only, size limit, nothing unexpected under ``postfix/`` and
``domains/``), secret placeholders, and every domain file against the models plus the cross-file
rules. A large revision's domain files are parsed in worker processes. Called by ``validate``.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import structlog

from reconciler.desired.domains import cross_domain_problems, parse_domain_file
from reconciler.desired.hosts import host_specs, host_tree, read_file
from reconciler.desired.text import shape_problem, text_problems
from reconciler.desired.types import (
    DOMAINS_DIR,
    HOSTS_DIR,
    MAX_FILE_SIZE,
    POSTFIX_DIR,
    REQUIRED_POSTFIX_FILES,
    ROOTFS_DIR,
    DesiredFile,
    DomainData,
    ParsedRevision,
)
from reconciler.errors import Problem
from reconciler.parsecache import ParseCache, write_rows
from reconciler.rows import Pair, rows_digest
from reconciler.source import EntryKind, Locator, Snapshot, read_located
from reconciler.vocab import Digest

log = structlog.get_logger("reconciler.desired")

Rows = tuple[tuple[Pair, ...], tuple[Pair, ...]]
# (domain, users, aliases, digest, case-folded alias pairs) of a valid domain file.
ParsedRows = tuple[str, tuple[Pair, ...], tuple[Pair, ...], Digest, tuple[Pair, ...]]
ParseOutcome = tuple[tuple[Problem, ...], ParsedRows | None]
# Parsing is CPU-bound (~8 us a mailbox on the fast path, ~18 us through PyYAML): above this many
# bytes of domain files to parse, both cores work on it. Worker processes are spawned (not forked:
# the agent runs threads), which costs ~0.5 s, so small changes stay in-process.
PARALLEL_PARSE_BYTES = 8 * 1024 * 1024


def _rows(users: tuple[Pair, ...], aliases: tuple[Pair, ...]) -> Rows:
    return users, aliases


def _cached_rows(cache: ParseCache, snapshot: Snapshot, path: str, blob: str) -> Rows:
    """A cached blob's rows; a rows file lost or torn (a power loss) is parsed again from git, with a warning."""
    try:
        return cache.rows(blob)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        log.warning("parse_cache.rows_unreadable", path=path, error=f"{type(exc).__name__}: {exc}")
    _problems, parsed = parse_for_rows(path, blob, snapshot.read(path), str(cache.rows_dir()))
    if parsed is None:  # cached as valid, so it parsed before: the same bytes parse again
        raise ValueError(f"{path}: cached as valid but does not parse")
    return parsed[1], parsed[2]


def parse_for_rows(path: str, blob_id: str, data: bytes, rows_dir: str | None = None) -> ParseOutcome:
    """Everything one domain file costs, in one call a worker process can run.

    Checks the text, parses and validates it, digests its rows and, with ``rows_dir`` (the parse
    cache's), writes its rows file there. Returns plain tuples (cheap to send between processes).
    """
    text_problem = text_problems(path, data)
    if text_problem:
        return tuple(text_problem), None
    result = parse_domain_file(path, data)
    if result.model is None:
        return result.problems, None
    model = result.model
    users = tuple((m.address, m.password) for m in model.mailboxes)
    aliases = tuple((a.source, a.destination) for a in model.aliases)
    if rows_dir is not None:
        write_rows(Path(rows_dir), blob_id, users, aliases)
    keys = tuple((s.casefold(), d.casefold()) for s, d in aliases)
    return result.problems, (model.domain, users, aliases, rows_digest(users, aliases), keys)


def _parse_located(batch: list[tuple[str, str, Locator]], rows_dir: str | None) -> list[ParseOutcome]:
    """A worker's share: read each file from the repository itself, then parse it."""
    return [parse_for_rows(path, blob_id, read_located(where), rows_dir) for path, blob_id, where in batch]


def _parse_all(
    snapshot: Snapshot, items: list[tuple[str, str, int]], rows_dir: str | None = None
) -> list[ParseOutcome]:
    """Read and parse domain files, on every core when there is enough; results in input order.

    Workers get where each file is (repository and blob id), not its bytes: they inflate the
    blobs themselves, in parallel, and nothing big is pickled on the way in.
    """
    workers = min(os.cpu_count() or 1, 4)
    total = sum(size for _, _, size in items)
    if workers < 2 or total < PARALLEL_PARSE_BYTES or len(items) < 2:
        return [parse_for_rows(path, blob_id, snapshot.read(path), rows_dir) for path, blob_id, _ in items]
    # Contiguous batches of about equal size, a few per worker, keep pickling overhead low.
    per_batch = max(total // (workers * 4), 1)
    batches: list[list[tuple[str, str, Locator]]] = [[]]
    size = 0
    for path, blob_id, item_size in items:
        if size >= per_batch:
            batches.append([])
            size = 0
        batches[-1].append((path, blob_id, snapshot.locate(path)))
        size += item_size
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        return [o for batch in pool.map(_parse_located, batches, [rows_dir] * len(batches)) for o in batch]


def build_desired(
    snapshot: Snapshot,
    cache: ParseCache | None = None,
    outside_paths: Iterable[str] = ("/etc/aliases",),
    host: str | None = None,
) -> tuple[ParsedRevision, list[Problem]]:
    """Parse and check a snapshot; returns the state (possibly partial) and every problem.

    With a cache, a domain file whose blob was parsed and found valid before is not read again.
    A ``rootfs/`` file is managed only when its absolute path is one of ``outside_paths``; any
    other is left alone, with a note (never a write outside the config directory).
    With ``host``, the files are that host's (see the module docstring); every host file is
    checked either way.
    """
    allowed = frozenset(outside_paths)
    notes: list[Problem] = []
    problems: list[Problem] = []
    files: dict[str, DesiredFile] = {}
    domains: list[DomainData] = []
    to_parse: list[tuple[str, str, int]] = []  # (path, blob id, size) of domain files to parse
    for path in sorted(snapshot.entries):
        entry = snapshot.entries[path]
        in_postfix, in_domains, in_rootfs = (path.startswith(d) or path == d.rstrip("/") for d in _AREAS)
        kind = _kind_problem(entry.kind, in_postfix or in_domains or in_rootfs or path.startswith(HOSTS_DIR))
        if kind is not None:
            if kind:
                problems.append(Problem(path, None, kind))
            continue
        if path.startswith(HOSTS_DIR):
            continue  # read by host_specs
        if not (in_postfix or in_domains or in_rootfs):
            continue  # README.md, CI files and the like are not managed
        shape = shape_problem(path)
        if shape:
            problems.append(Problem(path, None, shape))
            continue
        if in_rootfs:
            live = "/" + path[len(ROOTFS_DIR) :]
            if live not in allowed:
                notes.append(Problem(path, None, f"{live} is not in [postfix].outside_paths on this host: left alone"))
                continue
        if entry.size > MAX_FILE_SIZE:
            problems.append(Problem(path, None, f"file is {entry.size} bytes; the limit is {MAX_FILE_SIZE}"))
            continue
        known = _cached_domain(cache, snapshot, path, entry.blob_id) if cache is not None and in_domains else None
        if known is not None:
            domains.append(known)
            continue
        if in_domains:
            to_parse.append((path, entry.blob_id, entry.size))  # read, checked and parsed in _parse_all
            continue
        name = live if in_rootfs else path[len(POSTFIX_DIR) :]
        desired_file, file_problems = read_file(snapshot, path, name, entry.blob_id)
        problems.extend(file_problems)
        if desired_file is not None:
            files[name] = desired_file
    problems.extend(_parse_domains(snapshot, to_parse, cache, domains))
    for required in REQUIRED_POSTFIX_FILES:
        if required not in files and not any(p.path == POSTFIX_DIR + required for p in problems):
            problems.append(Problem(POSTFIX_DIR + required, None, "required file is missing"))
    problems.extend(cross_domain_problems(snapshot, domains))
    if cache is not None:
        cache.save(d.blob_id for d in domains)
    hosts, host_problems = host_specs(snapshot)
    problems.extend(host_problems)
    spec = hosts.get(host) if host else None
    host_files = host_tree(files, spec) if spec is not None else files
    by_name = {d.name: d for d in domains}
    state = ParsedRevision(snapshot.revision, host_files, by_name, tuple(notes), hosts, spec, files)
    return state, problems


_AREAS = (POSTFIX_DIR, DOMAINS_DIR, ROOTFS_DIR)


def _kind_problem(kind: EntryKind, managed_area: bool) -> str | None:
    """Why an entry that is not a regular file is refused ("" to skip it silently; None: a file)."""
    if kind is EntryKind.SYMLINK:
        return "symbolic links are not allowed" if managed_area else ""
    if kind is EntryKind.SUBMODULE:
        return "submodules are not allowed"
    if kind is EntryKind.OTHER:
        return "only regular files are allowed"
    return None


def _cached_domain(cache: ParseCache, snapshot: Snapshot, path: str, blob: str) -> DomainData | None:
    """The domain of a blob parsed and found valid before (under the same file name), else None."""
    cached = cache.get(blob)
    if cached is None or path != f"{DOMAINS_DIR}{cached.domain}.yaml":
        return None
    rows = partial(_cached_rows, cache, snapshot, path, blob)
    return DomainData(cached.domain, path, blob, cached.digest, cached.alias_keys, rows)


def _parse_domains(
    snapshot: Snapshot, to_parse: list[tuple[str, str, int]], cache: ParseCache | None, domains: list[DomainData]
) -> list[Problem]:
    """Parse the domain files not known to the cache, adding each valid one to ``domains``."""
    problems: list[Problem] = []
    rows_dir = str(cache.rows_dir()) if cache is not None and to_parse else None
    for (path, blob_id, _), (parse_problems, parsed) in zip(
        to_parse, _parse_all(snapshot, to_parse, rows_dir), strict=True
    ):
        problems.extend(parse_problems)
        if parsed is not None:
            name, users, aliases, digest, keys = parsed
            domains.append(DomainData(name, path, blob_id, digest, keys, partial(_rows, users, aliases)))
            if cache is not None:
                cache.remember(blob_id, name, digest, keys)
    return problems
