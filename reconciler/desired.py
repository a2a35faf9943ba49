"""The desired stage: a Snapshot parsed and checked into a typed ``DesiredState``.

Pure apart from reading blobs from the snapshot. Checks everything that needs no Postfix: the
repository's shape (regular UTF-8 files only, size limit, nothing unexpected under ``postfix/`` and
``domains/``), secret placeholders, and every domain file against the models plus the cross-file
rules (file name equals domain, addresses inside their domain, no duplicates, no alias cycles).
Every problem is collected, never just the first. Called by ``validate`` and later stages.

A fleet's ``hosts/<name>.yaml`` files (SPEC section 6) are parsed here too: ``build_desired`` for a
named host returns that host's files (``postfix/`` with its ``hosts/<name>/postfix/`` files replacing
the same paths and its ``main_cf`` parameters set in main.cf); the rows are the same for every host.
"""

from __future__ import annotations

import gc
import hashlib
import multiprocessing
import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import yaml
from pydantic import ValidationError

from reconciler import fastyaml
from reconciler.cfparse import set_parameters
from reconciler.errors import Problem
from reconciler.models import DomainFile, HostFile, outside_path_problem
from reconciler.parsecache import ParseCache, write_rows
from reconciler.source import EntryKind, Locator, Snapshot, read_located
from reconciler.vocab import CONTROL_IN_TEXT, SECRET_NAME, SECRET_REF, Digest

log = structlog.get_logger("reconciler.desired")

MAX_FILE_SIZE = 64 * 1024 * 1024
MAX_PROBLEMS_PER_FILE = 1000
POSTFIX_DIR = "postfix/"
DOMAINS_DIR = "domains/"
ROOTFS_DIR = "rootfs/"
MAX_DEPTH = 6  # postfix/a/b/c/d/FILE: deeper trees are a mistake, not a layout
HOSTS_DIR = "hosts/"
# Names Postfix config files can safely have: no spaces, no shell or map metacharacters.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*\Z")
# Built tables and editor leftovers never belong in the repo: the agent builds tables itself.
_GENERATED_SUFFIXES = (".db", ".lmdb", ".cdb", ".dir", ".pag", ".swp", "~")
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
class DesiredState:
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


def build_desired(
    snapshot: Snapshot,
    cache: ParseCache | None = None,
    outside_paths: Iterable[str] = ("/etc/aliases",),
    host: str | None = None,
) -> tuple[DesiredState, list[Problem]]:
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
        in_postfix = path.startswith(POSTFIX_DIR) or path == POSTFIX_DIR.rstrip("/")
        in_domains = path.startswith(DOMAINS_DIR) or path == DOMAINS_DIR.rstrip("/")
        in_rootfs = path.startswith(ROOTFS_DIR) or path == ROOTFS_DIR.rstrip("/")
        if entry.kind is EntryKind.SYMLINK:
            if in_postfix or in_domains or in_rootfs or path.startswith(HOSTS_DIR):
                problems.append(Problem(path, None, "symbolic links are not allowed"))
            continue
        if entry.kind is EntryKind.SUBMODULE:
            problems.append(Problem(path, None, "submodules are not allowed"))
            continue
        if entry.kind is EntryKind.OTHER:
            problems.append(Problem(path, None, "only regular files are allowed"))
            continue
        if path.startswith(HOSTS_DIR):
            continue  # read by host_specs
        if not (in_postfix or in_domains or in_rootfs):
            continue  # README.md, CI files and the like are not managed
        shape = _shape_problem(path)
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
        cached = cache.get(entry.blob_id) if cache is not None and in_domains else None
        if cache is not None and cached is not None and path == f"{DOMAINS_DIR}{cached.domain}.yaml":
            blob = entry.blob_id
            domains.append(
                DomainData(
                    cached.domain,
                    path,
                    blob,
                    cached.digest,
                    cached.alias_keys,
                    partial(_cached_rows, cache, snapshot, path, blob),
                )
            )
            continue
        if in_domains:
            to_parse.append((path, entry.blob_id, entry.size))  # read, checked and parsed in _parse_all
            continue
        name = live if in_rootfs else path[len(POSTFIX_DIR) :]
        desired_file, file_problems = _read_file(snapshot, path, name, entry.blob_id)
        problems.extend(file_problems)
        if desired_file is not None:
            files[name] = desired_file
    rows_dir = str(cache.rows_dir()) if cache is not None and to_parse else None
    for path, blob_id, (parse_problems, parsed) in zip(
        [p for p, _, _ in to_parse], [b for _, b, _ in to_parse], _parse_all(snapshot, to_parse, rows_dir), strict=True
    ):
        problems.extend(parse_problems)
        if parsed is not None:
            name, users, aliases, digest, keys = parsed
            domains.append(DomainData(name, path, blob_id, digest, keys, partial(_rows, users, aliases)))
            if cache is not None:
                cache.remember(blob_id, name, digest, keys)
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
    state = DesiredState(snapshot.revision, host_files, {d.name: d for d in domains}, tuple(notes), hosts, spec, files)
    return state, problems


def host_specs(snapshot: Snapshot) -> tuple[dict[str, HostSpec], list[Problem]]:
    """Every ``hosts/<name>.yaml`` with its ``hosts/<name>/postfix/`` files, and their problems."""
    problems: list[Problem] = []
    models: dict[str, tuple[str, HostFile]] = {}
    replacements: dict[str, dict[str, DesiredFile]] = {}
    for path in sorted(p for p in snapshot.entries if p.startswith(HOSTS_DIR)):
        entry = snapshot.entries[path]
        if entry.kind not in (EntryKind.FILE, EntryKind.EXECUTABLE):
            continue  # symlinks and the like: reported by build_desired
        parts = path.split("/")
        if entry.size > MAX_FILE_SIZE:
            problems.append(Problem(path, None, f"file is {entry.size} bytes; the limit is {MAX_FILE_SIZE}"))
            continue
        if len(parts) == 2 and parts[1].endswith(".yaml"):
            model, file_problems = parse_host_file(path, snapshot.read(path))
            problems.extend(file_problems)
            if model is not None:
                models[model.host] = (path, model)
            continue
        if len(parts) >= 4 and parts[2] == "postfix":
            # The same shapes as postfix/ itself, subdirectories included (postfix/sql/...).
            name = "/".join(parts[3:])
            shape = _shape_problem(POSTFIX_DIR + name)
            if shape:
                problems.append(Problem(path, None, shape))
                continue
            desired_file, file_problems = _read_file(snapshot, path, name, entry.blob_id)
            problems.extend(file_problems)
            if desired_file is not None:
                replacements.setdefault(parts[1], {})[name] = desired_file
            continue
        problems.append(
            Problem(path, None, "unexpected path: hosts/ holds <name>.yaml and <name>/postfix/<file> replacements")
        )
    for name in sorted(set(replacements) - set(models)):
        where = f"{HOSTS_DIR}{name}/postfix"
        problems.append(Problem(where, None, f"no host file {HOSTS_DIR}{name}.yaml for these files"))
    hosts = {
        name: HostSpec(name, path, model.wave, dict(model.main_cf), replacements.get(name, {}))
        for name, (path, model) in models.items()
    }
    return hosts, problems


def _read_file(snapshot: Snapshot, path: str, name: str, blob_id: str) -> tuple[DesiredFile | None, list[Problem]]:
    """A managed file (``postfix/``, ``rootfs/`` or a host's replacement): text checks, secret refs."""
    data = snapshot.read(path)
    problems = text_problems(path, data)
    if problems:
        return None, problems
    secrets, secret_problems = secret_refs(path, data.decode("utf-8"))
    return DesiredFile(name, blob_id, data, secrets), secret_problems


def host_tree(files: Mapping[str, DesiredFile], host: HostSpec) -> dict[str, DesiredFile]:
    """A host's desired files: the shared ones, its replacements, its main.cf parameters set."""
    out = {**files, **host.files}
    main = out.get("main.cf")
    if host.main_cf and main is not None:
        text = set_parameters(main.template.decode("utf-8"), host.main_cf, comment=f"set by {host.path}")
        data = text.encode("utf-8")
        # Not a blob of the repository: an id of its own, so that caches keyed by blob ids see a new file.
        blob = "host-" + hashlib.sha1(data, usedforsecurity=False).hexdigest()
        secrets, _ = secret_refs(host.path, text)
        out["main.cf"] = DesiredFile("main.cf", blob, data, secrets)
    return out


def parse_host_file(path: str, data: bytes) -> tuple[HostFile | None, list[Problem]]:
    """Parse and check one ``hosts/<name>.yaml``; problems carry the file's line numbers."""
    text_problem = text_problems(path, data)
    if text_problem:
        return None, text_problem
    raw, problems = load_yaml(path, data)
    if problems:
        return None, problems
    lines = _Lines(data.decode("utf-8"))
    if not isinstance(raw, dict):
        return None, [Problem(path, 1, "a host file must be a mapping with a 'host' key")]
    try:
        model = HostFile.model_validate(raw)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            loc = err["loc"]
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(Problem(path, lines.at(loc), f"{'.'.join(str(p) for p in loc)}: {msg}"))
        return None, problems
    stem = path[len(HOSTS_DIR) :].removesuffix(".yaml")
    if model.host != stem:
        return None, [Problem(path, lines.at(["host"]), f"host {model.host!r} must equal the file name {stem!r}")]
    return model, []


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


def _shape_problem(path: str) -> str | None:
    parts = path.split("/")
    if len(parts) < 2 or (parts[0] == "domains" and len(parts) != 2):
        return f"unexpected path: only files directly inside {parts[0]}/ are allowed"
    if len(parts) > (MAX_DEPTH if parts[0] == "postfix" else 4 * MAX_DEPTH):
        return f"unexpected path: at most {MAX_DEPTH - 2} levels of subdirectories"
    for part in parts[1:-1]:
        if not _SAFE_NAME.match(part):
            return f"unexpected directory name {part!r}: use letters, digits, '.', '_', '+' and '-'"
    if parts[0] == "rootfs":
        problem = outside_path_problem("/" + "/".join(parts[1:]))
        if problem:
            return f"rootfs/ holds a table at its absolute path: {problem}"
    name = parts[-1]
    if not _SAFE_NAME.match(name):
        return f"unexpected file name {name!r}: use letters, digits, '.', '_', '+' and '-'"
    if name.endswith(_GENERATED_SUFFIXES):
        return "built tables and editor files do not belong in the repo (the agent builds tables)"
    if parts[0] == "domains" and not name.endswith(".yaml"):
        return "unexpected file: domains/ holds only <domain>.yaml files"
    return None


def text_problems(path: str, data: bytes) -> list[Problem]:
    """UTF-8, no NUL, no control characters but tab and newline; one problem per bad line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [Problem(path, data[: exc.start].count(b"\n") + 1, "not valid UTF-8 text")]
    out: list[Problem] = []
    last_line = 0
    for m in CONTROL_IN_TEXT.finditer(text):
        number = text.count("\n", 0, m.start()) + 1
        if number != last_line:
            ch = m.group(0)
            what = "NUL byte" if ch == "\0" else f"control character {ch!r}"
            out.append(Problem(path, number, f"{what} (only tab and newline are allowed)"))
            last_line = number
    return out


def secret_refs(path: str, text: str) -> tuple[frozenset[str], list[Problem]]:
    """Names of the ``${secret:NAME}`` placeholders in a text, and malformed ones as problems."""
    names: set[str] = set()
    problems: list[Problem] = []
    if "${secret:" not in text:
        return frozenset(), problems  # the common case, and a million-line map costs no line loop
    for number, line in enumerate(text.split("\n"), start=1):
        for m in SECRET_REF.finditer(line):
            if SECRET_NAME.match(m.group(1)):
                names.add(m.group(1))
            else:
                problems.append(Problem(path, number, f"invalid secret name {m.group(1)!r}"))
        if "${secret:" in SECRET_REF.sub("", line):
            problems.append(Problem(path, number, "unterminated ${secret:...} placeholder"))
    return frozenset(names), problems


# ------------------------------------------------------------------------------------------------
# Domain files


class _Loader(yaml.CSafeLoader):
    """Safe YAML loader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen[key] = loader.construct_object(value_node, deep=True)
    return seen


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _compose(text: str) -> yaml.Node | None:
    return yaml.compose(text, Loader=_Loader)


def _node_line(
    root: yaml.Node | None,
    loc: Iterable[int | str],
    keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] | None = None,
) -> int | None:
    """Line of the YAML node at a pydantic error location (the deepest one that exists).

    ``keys`` caches each mapping's key index, so that many problems in one big mapping cost
    linear time, not quadratic.
    """
    keys = {} if keys is None else keys
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            index = keys.get(id(node))
            if index is None:
                index = {}
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode):
                        index.setdefault(key_node.value, (key_node, value_node))
                keys[id(node)] = index
            found = index.get(str(part))
            if found is None:
                return line
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


class _Lines:
    """Line numbers of a domain file's YAML nodes, composed only when a message needs one."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._root: yaml.Node | None = None
        self._done = False
        self._keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    def at(self, loc: Iterable[int | str]) -> int | None:
        if not self._done:
            try:
                self._root = _compose(self._text)
            except yaml.YAMLError:
                self._root = None
            self._done = True
        return _node_line(self._root, loc, self._keys)


def load_yaml(path: str, data: bytes) -> tuple[Any, list[Problem]]:
    """Safe-load YAML refusing duplicate keys; a syntax error becomes a problem with its line."""
    # The collector finds nothing to free in a freshly built document but costs ~30 % of the load.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, [Problem(path, data[: exc.start].count(b"\n") + 1, "not valid UTF-8 text")]
    enabled = gc.isenabled()
    gc.disable()
    try:
        fast = fastyaml.load(text)  # the common shape, ~3x faster; None for anything else
        if fast is not None:
            return fast, []
        return yaml.load(text, Loader=_Loader), []  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        reason = getattr(exc, "problem", None) or str(exc)
        return None, [Problem(path, line, f"invalid YAML: {reason}")]
    finally:
        if enabled:
            gc.enable()


def parse_domain_file(path: str, data: bytes) -> ParsedDomain:
    """Parse and check one ``domains/<domain>.yaml``; problems carry the file's line numbers."""
    raw, problems = load_yaml(path, data)
    if problems:
        return ParsedDomain(None, tuple(problems))
    lines = _Lines(data.decode("utf-8"))
    if not isinstance(raw, dict):
        return ParsedDomain(None, (Problem(path, 1, "a domain file must be a mapping with a 'domain' key"),))
    try:
        model = DomainFile.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if len(errors) > MAX_PROBLEMS_PER_FILE:
            problems.append(
                Problem(path, None, f"{len(errors)} problems; only the first {MAX_PROBLEMS_PER_FILE} are listed")
            )
        for err in errors[:MAX_PROBLEMS_PER_FILE]:
            loc = err["loc"]
            field = ".".join(str(p) for p in loc)
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key {loc[-1]!r}"
            elif err["type"] == "missing":
                msg = "required key is missing"
            problems.append(Problem(path, lines.at(loc), f"{field}: {msg}"))
        return ParsedDomain(None, tuple(problems))
    problems = _domain_rules(path, model, lines)
    return ParsedDomain(None if problems else model, tuple(problems))


def _domain_rules(path: str, model: DomainFile, lines: _Lines) -> list[Problem]:
    problems: list[Problem] = []
    domain = model.domain
    stem = path[len(DOMAINS_DIR) :].removesuffix(".yaml")
    if stem != domain:
        problems.append(Problem(path, lines.at(["domain"]), f"domain {domain!r} must equal the file name {stem!r}"))
    seen_mailboxes: dict[str, int] = {}
    for i, mailbox in enumerate(model.mailboxes):
        if mailbox.address.rpartition("@")[2].lower() != domain:
            problems.append(
                Problem(path, lines.at(["mailboxes", i]), f"mailbox {mailbox.address} is not in domain {domain}")
            )
        key = mailbox.address.casefold()
        if key in seen_mailboxes:
            problems.append(
                Problem(
                    path,
                    lines.at(["mailboxes", i]),
                    f"duplicate mailbox {mailbox.address} "
                    f"(first at line {lines.at(['mailboxes', seen_mailboxes[key]])})",
                )
            )
        else:
            seen_mailboxes[key] = i
    seen_aliases: dict[tuple[str, str], int] = {}
    for i, alias in enumerate(model.aliases):
        if alias.source.rpartition("@")[2].lower() != domain:
            problems.append(
                Problem(path, lines.at(["aliases", i]), f"alias source {alias.source} is not in domain {domain}")
            )
        pair = (alias.source.casefold(), alias.destination.casefold())
        if pair in seen_aliases:
            problems.append(
                Problem(
                    path,
                    lines.at(["aliases", i]),
                    f"duplicate alias {alias.source} -> {alias.destination} "
                    f"(first at line {lines.at(['aliases', seen_aliases[pair]])})",
                )
            )
        else:
            seen_aliases[pair] = i
    return problems


def cross_domain_problems(snapshot: Snapshot, domains: Iterable[DomainData]) -> list[Problem]:
    """Rules across domain files: a domain declared twice, alias cycles among hosted addresses."""
    problems: list[Problem] = []
    owner: dict[str, str] = {}
    ordered = sorted(domains, key=lambda d: d.path)
    for d in ordered:
        if d.name in owner:
            problems.append(Problem(d.path, 1, f"domain {d.name} is already declared in {owner[d.name]}"))
        else:
            owner[d.name] = d.path
    # Alias graph over hosted addresses; a self-edge (keep a copy) is how Postfix users say "also
    # deliver here" and is not a loop. Any longer cycle makes Postfix bounce the mail. Postfix
    # tries user@domain, then @domain: a destination that is neither an alias source nor a mailbox
    # of a domain with a catch-all goes on to that catch-all (a loop through two catch-alls is as
    # fatal as any other). Only edges into an address that leads on can close a cycle, so the graph
    # kept is small (a million mailboxes with plain aliases give none); mailboxes are read only
    # for domains with a catch-all that such an edge reaches.
    sources: set[str] = set()
    catch_all: dict[str, tuple[str, int]] = {}  # domain -> where its catch-all row is
    for d in ordered:
        for i, (src, _) in enumerate(d.alias_keys):
            sources.add(src)
            if src.startswith("@"):
                catch_all.setdefault(src[1:], (d.path, i))
    by_name = {d.name: d for d in ordered}
    mailboxes: dict[str, set[str]] = {}

    def leads_on(dst: str) -> bool:
        if dst in sources:
            return True
        domain = dst.rpartition("@")[2]
        if domain not in catch_all or dst.startswith("@"):
            return False
        if domain not in mailboxes:
            mailboxes[domain] = {e.casefold() for e, _ in by_name[domain].load()[0]}
        return dst not in mailboxes[domain]

    edges: dict[str, list[tuple[str, str, int]]] = {}
    for d in ordered:
        for i, (src, dst) in enumerate(d.alias_keys):
            if src != dst and leads_on(dst):
                edges.setdefault(src, []).append((dst, d.path, i))
                if dst not in sources:  # on to its domain's catch-all
                    domain = dst.rpartition("@")[2]
                    path, index = catch_all[domain]
                    edges.setdefault(dst, [("@" + domain, path, index)])
    for cycle in _cycles(edges):
        src = cycle[0]
        dst, path, index = next(e for e in edges[src] if e[0] == cycle[1 % len(cycle)])
        line = _Lines(snapshot.read(path).decode("utf-8")).at(["aliases", index])
        problems.append(Problem(path, line, "alias cycle: " + " -> ".join([*cycle, cycle[0]])))
    return problems


def _cycles(edges: Mapping[str, list[tuple[str, str, int]]]) -> list[list[str]]:
    """One representative cycle per strongly connected loop (iterative DFS, colours)."""
    white, grey, black = 0, 1, 2
    colour: dict[str, int] = {}
    found: list[list[str]] = []
    for start in sorted(edges):
        if colour.get(start, white) != white:
            continue
        stack: list[tuple[str, int]] = [(start, 0)]
        trail: list[str] = [start]
        colour[start] = grey
        while stack:
            node, idx = stack[-1]
            succ = edges.get(node, [])
            if idx < len(succ):
                stack[-1] = (node, idx + 1)
                nxt = succ[idx][0]
                state = colour.get(nxt, white)
                if state == white:
                    colour[nxt] = grey
                    stack.append((nxt, 0))
                    trail.append(nxt)
                elif state == grey:
                    found.append(trail[trail.index(nxt) :])
            else:
                colour[node] = black
                stack.pop()
                trail.pop()
    return found
