"""The agent's persistent state in ``[state].dir``: inventory, failed revisions, history.

Low layer (files only, no secrets ever): ``observed`` reads the inventory, ``apply`` writes it
after a successful apply, and the agent keeps its attempt history here. Every write is atomic
(temporary file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from reconciler.tables import TableDecl

log = structlog.get_logger("reconciler.state")


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new content.

    ``fsync=False`` is for caches: still never a torn file, but possibly the old one after a crash.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # a full disk: leave no partial temporary taking space
            tmp.unlink()
        if isinstance(exc, OSError) and not exc.filename:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc  # say which file
        raise
    os.replace(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def _warn_unreadable(path: Path, exc: Exception) -> None:
    """One warning for a state file that cannot be read: it is set aside and rebuilt, never a traceback."""
    log.warning("state.unreadable", path=str(path), error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    with contextlib.suppress(OSError):
        os.replace(path, path.with_name(f"{path.name}.corrupt"))


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Inventory:
    """What the agent manages on this host, as of the last successful apply (persisted)."""

    revision: str | None
    files: frozenset[str]
    tables: tuple[TableDecl, ...]  # persisted as [name, type, builder]

    def to_json(self) -> dict[str, Any]:
        tables = [[t.name, t.type, t.builder] for t in self.tables]
        return {"revision": self.revision, "files": sorted(self.files), "tables": tables}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Inventory:
        if not data:
            return cls(None, frozenset(), ())
        try:
            tables = tuple(TableDecl(str(t[0]), str(t[1]), str(t[2])) for t in data.get("tables", []))
            return cls(data.get("revision"), frozenset(str(f) for f in data.get("files", [])), tables)
        except (TypeError, IndexError, AttributeError) as exc:  # hand-edited or torn: start afresh
            log.warning("state.inventory_unreadable", error=str(exc))
            return cls(None, frozenset(), ())


class StateDir:
    """Accessors for the files of the state directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    @property
    def journal_path(self) -> Path:
        return self.path / "journal.json"

    @property
    def lock_path(self) -> Path:
        return self.path / "lock"

    def read_inventory(self) -> Inventory:
        return Inventory.from_json(self._read_json("inventory.json"))

    def write_inventory(self, inventory: Inventory) -> None:
        self._write_json("inventory.json", inventory.to_json())

    def failed_revisions(self) -> dict[str, str]:
        """Revision -> error of revisions that failed; not retried until the branch moves on."""
        data = self._read_json("failed.json")
        return {str(k): str(v) for k, v in (data or {}).items()}

    def record_failed(self, revision: str, error: str) -> None:
        failed = self.failed_revisions()
        failed[revision] = error
        # Keep the file small: only the most recent failures matter.
        self._write_json("failed.json", dict(list(failed.items())[-50:]))

    def clear_failed(self, revision: str) -> None:
        """Forget a failure once the revision applied (``apply --rev`` retried it successfully)."""
        failed = self.failed_revisions()
        if failed.pop(revision, None) is not None:
            self._write_json("failed.json", failed)

    def _read_json(self, name: str) -> Any:
        """A JSON object of the state dir; None when missing, or unreadable (torn by a power loss: warned once)."""
        path = self.path / name
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError as exc:  # truncated, empty, not UTF-8: rebuilt by the next write
            _warn_unreadable(path, exc)
            return None
        if not isinstance(data, dict):
            _warn_unreadable(path, ValueError("not a JSON object"))
            return None
        return data

    def _write_json(self, name: str, data: Mapping[str, Any] | list[Any]) -> None:
        self.ensure()
        atomic_write(self.path / name, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
