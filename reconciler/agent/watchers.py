"""Filesystem watchers (watchdog, inotify on Linux): the branch ref of a local source, and the config dir.

Started by the agent loop; each calls back into the trigger queue from watchdog's threads. No
polling: an idle agent sleeps in inotify reads. Only writes count: opening or reading a file
(Postfix and the agent's own ``observe`` read every managed file) raises no event.

- ``RefWatcher`` watches ``refs/heads/`` (loose refs, recursively, for branch names with slashes)
  and ``packed-refs`` of a bare or non-bare repository (or the common dir of a linked work tree),
  and fires for the configured branch only: git writes ``<ref>.lock`` and renames it into place.
- ``ConfigWatcher`` watches the Postfix config dir for managed files and their built tables. The
  apply's own renames (``.NAME.reconciler-new`` / ``-bak`` into ``NAME``) and temporaries are
  recognised by name and never count as drift; anything else seen while an apply runs is
  remembered and re-checked after it.
- ``DirWatcher`` calls back on any write in one directory (``[secrets].dir``): a secret written,
  replaced or fixed makes the agent retry a revision that waits for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pygit2
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

# Events that mean "content, name or metadata changed"; opened/closed-without-write are left out.
WRITE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileClosedEvent,
]
APPLY_MARK = ".reconciler-"  # temporaries and backups of an apply: .NAME.reconciler-{new,bak,src}


def git_common_dir(repo_path: Path) -> Path:
    """Where the refs of the repository at ``repo_path`` live (``.git``, the bare repo, or a common dir)."""
    git_dir = Path(pygit2.Repository(str(repo_path)).path)
    common = git_dir / "commondir"
    if common.is_file():
        return (git_dir / common.read_text(encoding="utf-8").strip()).resolve()
    return git_dir


def _paths(event: FileSystemEvent) -> list[str]:
    out = [os.fsdecode(event.src_path)]
    if isinstance(event, FileMovedEvent) and event.dest_path:
        out.append(os.fsdecode(event.dest_path))
    return out


class _Handler(FileSystemEventHandler):
    def __init__(self, callback: Callable[[FileSystemEvent], None]) -> None:
        super().__init__()
        self._callback = callback

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        self._callback(event)


class _Watcher:
    """One watchdog observer: subclasses say what to watch (``_schedule``) and how events are read."""

    def __init__(self) -> None:
        self._observer = Observer()

    def _schedule(self, path: Path, callback: Callable[[FileSystemEvent], None], *, recursive: bool) -> None:
        self._observer.schedule(_Handler(callback), str(path), recursive=recursive, event_filter=WRITE_EVENTS)

    def _watch(self) -> None:
        """Schedule every watched path (called once, by ``start``)."""
        raise NotImplementedError

    def start(self) -> None:
        self._watch()
        self._observer.daemon = True
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)


class RefWatcher(_Watcher):
    """Calls ``on_move`` whenever ``refs/heads/<branch>`` or ``packed-refs`` of the repository is written."""

    def __init__(self, repo_path: Path, branch: str, on_move: Callable[[], None]) -> None:
        self.common_dir = git_common_dir(repo_path)
        self.ref_path = str(self.common_dir / "refs" / "heads" / branch)
        self.packed_refs = str(self.common_dir / "packed-refs")
        self._on_move = on_move
        super().__init__()

    def _event(self, event: FileSystemEvent) -> None:
        if any(p in (self.ref_path, self.packed_refs) for p in _paths(event)):
            self._on_move()

    def _watch(self) -> None:
        heads = self.common_dir / "refs" / "heads"
        heads.mkdir(parents=True, exist_ok=True)
        self._schedule(heads, self._event, recursive=True)
        self._schedule(self.common_dir, self._event, recursive=False)


class ConfigWatcher(_Watcher):
    """Calls ``on_drift`` when a managed file (or a built table of one) changes outside an apply."""

    def __init__(self, config_dir: Path, on_drift: Callable[[], None]) -> None:
        self.config_dir = config_dir
        self._on_drift = on_drift
        self._managed: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self._applying = False
        self._missed = False
        super().__init__()

    def set_managed(self, names: Iterable[str]) -> None:
        """The file names the agent manages (from the inventory); their built tables count too."""
        with self._lock:
            self._managed = frozenset(names)

    def is_managed(self, name: str) -> bool:
        """Whether ``name`` (relative to the config dir: ``main.cf``, ``sql/x.cf``) is managed."""
        if name.rsplit("/", 1)[-1].startswith(".") or APPLY_MARK in name:
            return False
        managed = self._managed
        return name in managed or any(name.startswith(f"{m}.") for m in managed)

    def _event(self, event: FileSystemEvent) -> None:
        paths = _paths(event)
        if isinstance(event, FileMovedEvent) and APPLY_MARK in Path(paths[0]).name:
            return  # an apply (or a rollback, or recovery) renaming its own file into place
        if not any(self.is_managed(rel) for rel in self._relative(paths)):
            return
        with self._lock:
            if self._applying:
                self._missed = True
                return
        self._on_drift()

    def _relative(self, paths: Iterable[str]) -> Iterator[str]:
        """Event paths inside the config dir (subdirectories too), relative to it."""
        for p in paths:
            path = Path(p)
            if path.is_relative_to(self.config_dir) and path != self.config_dir:
                yield path.relative_to(self.config_dir).as_posix()

    def applying(self, active: bool) -> None:
        """Mark the start and end of an apply; events seen during it are re-checked at the end."""
        with self._lock:
            self._applying = active
            missed, self._missed = self._missed, False
        if not active and missed:
            self._on_drift()

    def _watch(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        # Recursive: managed files may live in subdirectories (postfix/sql/...). Outside tables
        # (rootfs/) are not watched; the periodic drift check covers them.
        self._schedule(self.config_dir, self._event, recursive=True)


class DirWatcher(_Watcher):
    """Calls ``on_change`` on any write to a file directly inside ``directory`` (which must exist)."""

    def __init__(self, directory: Path, on_change: Callable[[], None]) -> None:
        self.directory = directory
        self._on_change = on_change
        super().__init__()

    def _watch(self) -> None:
        self._schedule(self.directory, lambda _event: self._on_change(), recursive=False)
