"""The source stage: one revision of the desired-state repository, read without a checkout.

``open_snapshot`` reads a git revision straight from the object database with pygit2, or a plain
folder (or work tree) as it is. A ``Snapshot`` lists every entry with its git blob id, so later
stages can cache what they parse by blob id and re-parse only what changed. Called by ``validate``,
``diff``/``apply`` (through the CLI), ``pre-receive`` (inside git's quarantine: ``gitrepo``) and the
agent.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pygit2

from reconciler.errors import SourceError
from reconciler.gitrepo import open_repository


class EntryKind(StrEnum):
    """What a repository entry is; only ``file`` (and ``executable``) carry content."""

    FILE = "file"
    EXECUTABLE = "executable"
    SYMLINK = "symlink"
    SUBMODULE = "submodule"
    OTHER = "other"


@dataclass(frozen=True)
class Entry:
    """One path of a revision (in-memory): its kind, git blob id and size in bytes."""

    path: str
    kind: EntryKind
    blob_id: str
    size: int


@dataclass(frozen=True)
class CommitInfo:
    """Metadata of the commit a snapshot was read from (in-memory)."""

    id: str
    subject: str
    message: str
    author: str
    time: int


@dataclass(frozen=True)
class Snapshot:
    """A revision of the desired-state repository (in-memory, read-only)."""

    root: str
    revision: str | None
    entries: Mapping[str, Entry]
    commit: CommitInfo | None = None
    _repo: pygit2.Repository | None = field(default=None, repr=False, compare=False)

    def superseded_by(self, other: str, ref: str) -> bool:
        """Whether commit ``other`` is newer than this revision on ``ref`` as it is now.

        True when ``other`` descends from this revision and ``ref`` is at ``other`` or past it; a
        branch reset to an older commit (a rollback by force-push) leaves ``other`` off the branch,
        so it no longer supersedes anything. False when anything is unknown.
        """
        if self._repo is None or self.revision is None:
            return False
        try:
            head = str(self._repo.revparse_single(ref).peel(pygit2.Commit).id)
            if not self._repo.descendant_of(other, self.revision):
                return False
            return head == other or bool(self._repo.descendant_of(head, other))
        except (KeyError, ValueError, pygit2.GitError):
            return False

    def read(self, path: str) -> bytes:
        """Content of a file entry."""
        entry = self.entries[path]
        if self._repo is not None:
            blob = self._repo[entry.blob_id]
            assert isinstance(blob, pygit2.Blob)  # noqa: S101 - entries of kind file are blobs by construction
            return bytes(blob.data)
        return (Path(self.root) / path).read_bytes()

    def locate(self, path: str) -> Locator:
        """Where a file entry's content lives, for another process to read (``read_located``)."""
        entry = self.entries[path]
        if self._repo is not None:
            return (self.root, entry.blob_id)
        return ("", str(Path(self.root) / path))


# (git repository, blob id), or ("", file path) for a folder snapshot: plain strings, picklable.
Locator = tuple[str, str]
_worker_repos: dict[str, pygit2.Repository] = {}


def read_located(locator: Locator) -> bytes:
    """The content ``Snapshot.locate`` points at; for short-lived worker processes (repos stay open)."""
    root, ref = locator
    if not root:
        return Path(ref).read_bytes()
    repo = _worker_repos.get(root)
    if repo is None:
        repo = _worker_repos[root] = open_repository(root)
    blob = repo[ref]
    assert isinstance(blob, pygit2.Blob)  # noqa: S101 - located entries are blobs by construction
    return bytes(blob.data)


def open_snapshot(repo: Path, rev: str | None = None) -> Snapshot:
    """Read ``rev`` of the git repository at ``repo``, or the folder ``repo`` as it is when rev is None."""
    if rev is None:
        if not repo.is_dir():
            raise SourceError(f"{repo}: not a directory")
        return _folder_snapshot(repo)
    try:
        git = open_repository(repo)
    except (pygit2.GitError, KeyError) as exc:
        raise SourceError(f"{repo}: not a git repository") from exc
    try:
        obj = git.revparse_single(rev)
        commit = obj.peel(pygit2.Commit)
    except (KeyError, ValueError, pygit2.GitError) as exc:
        raise SourceError(f"{repo}: unknown revision {rev!r}") from exc
    entries: dict[str, Entry] = {}
    _walk_tree(git, git.odb, commit.tree, "", entries)
    message = commit.message
    info = CommitInfo(
        id=str(commit.id),
        subject=message.splitlines()[0] if message else "",
        message=message,
        author=f"{commit.author.name} <{commit.author.email}>",
        time=commit.commit_time,
    )
    return Snapshot(str(repo), str(commit.id), entries, info, git)


def _walk_tree(git: pygit2.Repository, odb: pygit2.Odb, tree: pygit2.Tree, prefix: str, out: dict[str, Entry]) -> None:
    for item in tree:
        path = f"{prefix}{item.name}"
        mode = item.filemode
        if mode == pygit2.enums.FileMode.TREE:
            subtree = git[item.id]
            assert isinstance(subtree, pygit2.Tree)  # noqa: S101 - mode TREE means a tree object
            _walk_tree(git, odb, subtree, f"{path}/", out)
            continue
        if mode == pygit2.enums.FileMode.BLOB:
            kind = EntryKind.FILE
        elif mode == pygit2.enums.FileMode.BLOB_EXECUTABLE:
            kind = EntryKind.EXECUTABLE
        elif mode == pygit2.enums.FileMode.LINK:
            kind = EntryKind.SYMLINK
        elif mode == pygit2.enums.FileMode.COMMIT:
            out[path] = Entry(path, EntryKind.SUBMODULE, str(item.id), 0)
            continue
        else:
            kind = EntryKind.OTHER
        # The object header gives the size without inflating the blob (a cached file is never read).
        _, size = odb.read_header(item.id)
        out[path] = Entry(path, kind, str(item.id), size)


def _folder_snapshot(root: Path) -> Snapshot:
    entries: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        prefix = "" if rel_dir == "." else f"{Path(rel_dir).as_posix()}/"
        if prefix == "":
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in [*dirnames]:
            full = Path(dirpath) / name
            if full.is_symlink():
                entries[f"{prefix}{name}"] = Entry(f"{prefix}{name}", EntryKind.SYMLINK, "", 0)
                dirnames.remove(name)
            elif (full / ".git").exists():
                entries[f"{prefix}{name}"] = Entry(f"{prefix}{name}", EntryKind.SUBMODULE, "", 0)
                dirnames.remove(name)
        for name in filenames:
            full = Path(dirpath) / name
            st = full.lstat()
            path = f"{prefix}{name}"
            if stat.S_ISLNK(st.st_mode):
                entries[path] = Entry(path, EntryKind.SYMLINK, "", 0)
            elif stat.S_ISREG(st.st_mode):
                kind = EntryKind.EXECUTABLE if st.st_mode & 0o111 else EntryKind.FILE
                blob_id = str(pygit2.hash(full.read_bytes()))
                entries[path] = Entry(path, kind, blob_id, st.st_size)
            else:
                entries[path] = Entry(path, EntryKind.OTHER, "", 0)
    return Snapshot(str(root), None, entries)
