"""Parsed domain files cached by git blob id in the state dir, so one change costs O(change).

A blob id names the exact bytes of a file, so what parsing and checking it produced can be reused
for as long as the cache format and the package version stay the same. ``index.json`` holds, per
valid blob, the domain, the rows' digest and the alias pairs (for the cross-file cycle check);
``rows/<blob>.json`` holds the rows, read only when a domain differs from the database. Invalid
blobs are never cached: their problems are recomputed, with line numbers. Password hashes are
cached (the database holds them anyway); secrets never are.
Called by ``desired.build_desired``; the state dir is trusted (0700, the agent's own).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import structlog

from reconciler import __version__
from reconciler.state import atomic_write
from reconciler.vocab import Digest

log = structlog.get_logger("reconciler.parsecache")

FORMAT = f"2/{__version__}"  # 2: stage.json tables carry a build key
Pair = tuple[str, str]


@dataclass(frozen=True)
class CachedDomain:
    """What the index knows of one valid domain blob (in-memory)."""

    domain: str
    digest: Digest
    alias_keys: tuple[Pair, ...]  # case-folded (source, destination), in file order


class ParseCache:
    """The cache directory ``<state>/parsed``; load once, then ``get``/``put``, then ``save``.

    ``ParseCache.open`` reuses the instance a long-running process (the agent) loaded before, as
    long as the index file is the one it last read or wrote: one push costs no index reload.
    """

    _open: ClassVar[dict[Path, ParseCache]] = {}

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._index: dict[str, CachedDomain] = {}
        self._dirty = False
        self._stamp: tuple[int, int] | None = None
        self._load()

    @classmethod
    def open(cls, directory: Path) -> ParseCache:
        """The cache of ``directory``, reused from an earlier call when the index is unchanged."""
        known = cls._open.get(directory)
        if known is not None and known._stamp is not None and known._stamp == _stamp(directory / "index.json"):
            return known
        cache = cls(directory)
        cls._open[directory] = cache
        return cache

    def _load(self) -> None:
        index = self.dir / "index.json"
        try:
            self._stamp = _stamp(index)
            data = json.loads(index.read_bytes())
        except FileNotFoundError:
            self._stamp = None
            return
        except ValueError as exc:  # torn or truncated (a power loss: the cache is not fsynced)
            log.warning("parse_cache.unreadable", path=str(index), error=str(exc))
            self._stamp = None
            return
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return  # another version parsed these: start afresh
        try:
            for blob, e in data.get("blobs", {}).items():
                digest = (int(e["digest"][0]), int(e["digest"][1]), int(e["digest"][2]), int(e["digest"][3]))
                self._index[blob] = CachedDomain(str(e["domain"]), digest, tuple((a, b) for a, b in e["aliases"]))
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            log.warning("parse_cache.unreadable", path=str(index), error=f"{type(exc).__name__}: {exc}")
            self._index = {}  # every domain file is parsed again

    def get(self, blob_id: str) -> CachedDomain | None:
        """The cached summary of a blob, or None."""
        return self._index.get(blob_id)

    def rows(self, blob_id: str) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
        """(users, aliases) of a cached blob, as (email, password) and (source, destination)."""
        data = json.loads((self.dir / "rows" / f"{blob_id}.json").read_text(encoding="utf-8"))
        users = tuple((str(e), str(p)) for e, p in data["users"])
        aliases = tuple((str(s), str(d)) for s, d in data["aliases"])
        return users, aliases

    def rows_dir(self) -> Path:
        """The directory of the rows files, created if missing (parse workers write into it)."""
        rows_dir = self.dir / "rows"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        rows_dir.mkdir(mode=0o700, exist_ok=True)
        return rows_dir

    def remember(self, blob_id: str, domain: str, digest: Digest, alias_keys: tuple[Pair, ...]) -> None:
        """Index a valid blob whose rows file ``write_rows`` has written."""
        self._index[blob_id] = CachedDomain(domain, digest, alias_keys)
        self._dirty = True

    def stage_result(self, key: str) -> list[list[Any]] | None:
        """Tables found by an earlier clean staged check of the same postfix/ tree, or None."""
        try:
            data = json.loads((self.dir / "stage.json").read_bytes())
        except (FileNotFoundError, ValueError):
            return None  # missing or torn: the staged check runs again
        if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key:
            return None
        tables = data.get("tables")
        if not isinstance(tables, list) or not all(isinstance(t, list) and len(t) == 5 for t in tables):
            return None
        return tables

    def put_stage_result(self, key: str, tables: list[list[Any]]) -> None:
        """Remember the tables of a postfix/ tree that passed Postfix's checks (only the latest).

        Tables are ``[name, type, builder, parameters, build_key]``; built files kept for other
        trees are removed.
        """
        doc = {"format": FORMAT, "key": key, "tables": tables}
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self.dir / "stage.json", json.dumps(doc).encode(), fsync=False)
        except OSError as exc:  # a cache: a full or read-only state dir costs speed, not the reconcile
            log.warning("parse_cache.write_failed", path=str(self.dir / "stage.json"), error=str(exc))
            return
        keep = {str(t[4]) for t in tables if t[4]}
        with contextlib.suppress(FileNotFoundError):
            for entry in (self.dir / "built").iterdir():
                if entry.name not in keep:
                    shutil.rmtree(entry, ignore_errors=True)

    def built_dir(self) -> Path:
        """Where the staged check leaves tables it built from the repo's exact bytes (by build key).

        Only tables whose source names no secret go there: the state dir never holds a secret.
        """
        path = self.dir / "built"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        return path

    def save(self, keep: Iterable[str]) -> None:
        """Write the index, keeping only the blobs of the current revision (others are pruned)."""
        wanted = set(keep)
        stale = set(self._index) - wanted
        if not self._dirty and not stale:
            return
        for blob in stale:
            del self._index[blob]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.dir / "rows" / f"{blob}.json")
        doc: dict[str, Any] = {
            "format": FORMAT,
            "blobs": {
                b: {"domain": c.domain, "digest": list(c.digest), "aliases": [list(p) for p in c.alias_keys]}
                for b, c in self._index.items()
            },
        }
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic_write(self.dir / "index.json", json.dumps(doc, separators=(",", ":")).encode(), fsync=False)
        except OSError as exc:  # a cache: the next run parses again
            log.warning("parse_cache.write_failed", path=str(self.dir / "index.json"), error=str(exc))
            return
        self._dirty = False
        self._stamp = _stamp(self.dir / "index.json")


def built_files(cache_dir: Path, build_key: str, name: str, suffixes: Iterable[str]) -> list[Path] | None:
    """The files a staged check built for ``build_key`` (one per suffix), or None if any is gone."""
    if not build_key:
        return None
    base = name.rsplit("/", 1)[-1]  # a table in a subdirectory or outside: kept by its base name
    paths = [cache_dir / "built" / build_key / f"{base}{suffix}" for suffix in suffixes]
    return paths if all(p.is_file() for p in paths) else None


def write_rows(
    rows_dir: Path, blob_id: str, users: list[Pair] | tuple[Pair, ...], aliases: list[Pair] | tuple[Pair, ...]
) -> None:
    """Write ``rows/<blob>.json`` (no fsync: the cache is rebuilt from git if it is lost)."""
    body = json.dumps({"users": users, "aliases": aliases}, separators=(",", ":"))
    try:
        atomic_write(rows_dir / f"{blob_id}.json", body.encode(), fsync=False)
    except OSError as exc:  # a full state dir: the rows are parsed again from git when needed
        log.warning("parse_cache.write_failed", path=str(rows_dir / f"{blob_id}.json"), error=str(exc))


def _stamp(path: Path) -> tuple[int, int] | None:
    """(inode, mtime) of a file: changes with every rename-into-place."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns
